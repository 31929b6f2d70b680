/*
 * buddy.c -- buddy allocator over offsets: size classes min_block * fanout**k.
 *
 * hcsshim's internal/memory pool, generalised (fanout 4, min 1 MiB, max 4 GiB
 * gives its seven classes) and with its O(n) map scan replaced by bitmaps:
 *   - Class k holds blocks of size(k) = min_block * fanout**k, k < K, where
 *     size(K-1) = max_block.  min_block and fanout are powers of two, so every
 *     class size is one, and a block of class k sits at an offset that is a
 *     multiple of its size: block (k, i) is [i*size(k), (i+1)*size(k)).
 *   - The usable span is the capacity rounded down to a multiple of min_block
 *     (head.capacity; the tail beyond it is never handed out and is not counted
 *     anywhere).  reset() carves it greedily from offset 0 into the largest
 *     blocks that fit: as many class K-1 blocks as fit, then fewer than fanout
 *     blocks of each smaller class (the base-fanout digits of the span).
 *   - alloc(size, align): k0 = the smallest class with size(k0) >= size.  The
 *     lowest free block of the smallest non-empty class k >= k0 with size(k) >=
 *     align (every block of such a class is aligned; the non-empty classes bitmap
 *     and the class's bitmap answer in O(log n)).  Only an align beyond max_block
 *     searches instead, class by class from k0, for the lowest free block at a
 *     multiple of align (a strided search; there are few such offsets).  A block
 *     of class k > k0 is split: it keeps its offset, it becomes its first child
 *     at each class down to k0, and the other fanout-1 children at each level go
 *     free.  So an align above size(k0) costs no memory, only a larger split.
 *   - free(offset): the block goes free; while all fanout siblings of a free
 *     block are free (and the class is below K-1), they merge into their parent.
 *   - The last split is kept as a pending chain instead of being written into the
 *     bitmaps, so that alloc + free of a lone block is O(1), not two walks over
 *     the classes (see materialize()).  Nothing observable depends on it.
 *   - realloc: the same class stays; a smaller class keeps the offset and frees
 *     the tail buddies; a larger class grows in place when the block is the first
 *     descendant of its new ancestor and every other part of that ancestor is
 *     free; else it moves to a new block (alloc with the old one held, then free
 *     it), else to the block that freeing it would merge into (may overlap the
 *     old block: the caller copies with memmove).  On failure nothing changed.
 *
 * The state layout and its invariants are in buddy.h; check() is in buddy_check.c.
 */
#include <stdio.h>
#include <string.h>

#include "buddy.h"

#define BD_NONE UINT64_MAX

/* BIT[n] == 1 << n: a load instead of a variable shift in the split/merge loops */
#define B4(n) 1ull << (n), 1ull << ((n) + 1), 1ull << ((n) + 2), 1ull << ((n) + 3)
#define B16(n) B4(n), B4((n) + 4), B4((n) + 8), B4((n) + 12)
static const uint64_t BIT[64] = {B16(0), B16(16), B16(32), B16(48)};
#undef B16
#undef B4
static inline int msb64(uint64_t x) { return 63 - __builtin_clzll(x); }

/* 0 when the parameters are invalid; max_block 0 = the largest class that fits. */
int mpi_buddy_make_plan(uint64_t capacity, uint64_t min_block, uint64_t max_block, uint64_t fanout,
                    bd_plan_t *P)
{
    if (capacity == 0 || !mp_is_pow2(min_block) || !mp_is_pow2(fanout) || fanout < 2) return 0;
    if (capacity < min_block) return 0;
    uint32_t ms = (uint32_t)ctz64(min_block), fs = (uint32_t)ctz64(fanout);
    uint64_t nslots = capacity >> ms;
    if (nslots > BD_MAX_SLOTS) return 0;
    uint32_t K;
    if (max_block == 0) {
        K = 1;
        while (ms + (uint64_t)K * fs < 64 && ((uint64_t)1 << (ms + K * fs)) <= capacity) K++;
    } else {
        if (!mp_is_pow2(max_block) || max_block < min_block || max_block > capacity) return 0;
        uint32_t d = (uint32_t)ctz64(max_block) - ms;
        if (d % fs) return 0;
        K = d / fs + 1;
    }
    if (K > BD_MAX_CLASSES) return 0;
    memset(P, 0, sizeof *P);
    P->min_shift = ms;
    P->fan_shift = fs;
    P->nclasses = K;
    P->nslots = nslots;
    P->usable = nslots << ms;
    P->max_block = (uint64_t)1 << (ms + (K - 1) * fs);
    uint64_t w = 0;
    for (uint32_t k = 0; k < K; k++) {
        bd_class_t *c = &P->cls[k];
        c->nbits = nslots >> (k * fs);
        uint64_t bits = c->nbits;
        do {
            if (c->nlevels == BD_MAX_LEVELS) return 0;
            c->lvl[c->nlevels++] = w;
            bits = words_for(bits);
            w += bits;
        } while (bits > 1);
    }
    P->nwords = w;
    P->words_off = BD_CLS_OFF + (uint64_t)K * sizeof(bd_class_t);
    P->req_off = P->words_off + 8 * w;
    P->tag_off = P->req_off + 8 * nslots;
    P->size = P->tag_off + ((nslots + 7) & ~(uint64_t)7);
    return 1;
}

/* ---- hierarchical bitmaps (hb_test, hb_count_range: buddy.h) -------------------- */
/* OR `bits` (non-zero) into word `wi` of level l, propagating a new non-zero word
 * upwards. */
static inline void hb_or(uint64_t *w, const bd_class_t *c, uint32_t l, uint64_t wi, uint64_t bits)
{
    for (;;) {
        uint64_t *p = &w[c->lvl[l] + wi];
        uint64_t was = *p;
        *p = was | bits;
        if (was || ++l == c->nlevels) return;
        bits = (uint64_t)1 << (wi & 63);
        wi >>= 6;
    }
}

/* Clear `bits` in word `wi` of level l, propagating a word that became zero.
 * Returns 1 when the class has no set bit left (its top word is zero). */
static inline int hb_andnot(uint64_t *w, const bd_class_t *c, uint32_t l, uint64_t wi,
                            uint64_t bits)
{
    for (;;) {
        uint64_t *p = &w[c->lvl[l] + wi];
        uint64_t v = *p & ~bits;
        *p = v;
        if (v) return 0;
        if (++l == c->nlevels) return 1;
        bits = (uint64_t)1 << (wi & 63);
        wi >>= 6;
    }
}

/* Set / clear level-0 bits [from, from+n) (n >= 1); clear returns 1 when the class
 * is left empty. */
static void hb_set_range(uint64_t *w, const bd_class_t *c, uint64_t from, uint64_t n)
{
    while (n) {
        uint64_t k = 64 - (from & 63);
        if (k > n) k = n;
        hb_or(w, c, 0, from >> 6, range_mask(from, k));
        from += k;
        n -= k;
    }
}
static int hb_clear_range(uint64_t *w, const bd_class_t *c, uint64_t from, uint64_t n)
{
    int empty = 0;
    while (n) {
        uint64_t k = 64 - (from & 63);
        if (k > n) k = n;
        empty = hb_andnot(w, c, 0, from >> 6, range_mask(from, k));
        from += k;
        n -= k;
    }
    return empty;
}

/* The lowest set bit, or BD_NONE. */
static inline uint64_t hb_first(const uint64_t *w, const bd_class_t *c)
{
    uint64_t i = 0;
    for (uint32_t l = c->nlevels; l-- > 0;) {
        uint64_t x = w[c->lvl[l] + i];
        if (!x) return BD_NONE;
        i = (i << 6) | (uint64_t)ctz64(x);
    }
    return i;
}

/* The lowest set bit at or after pos, or BD_NONE. */
static uint64_t hb_next(const uint64_t *w, const bd_class_t *c, uint64_t pos)
{
    uint64_t nb = c->nbits; /* bits at level l */
    uint32_t l = 0;
    for (;;) {
        if (pos >= nb) return BD_NONE; /* (upper levels: no word beyond the last) */
        uint64_t x = w[c->lvl[l] + (pos >> 6)] & (~0ull << (pos & 63));
        if (x) {
            pos = (pos & ~(uint64_t)63) | (uint64_t)ctz64(x);
            break;
        }
        if (++l == c->nlevels) return BD_NONE;
        pos = (pos >> 6) + 1;
        nb = words_for(nb);
    }
    while (l-- > 0) {
        uint64_t x = w[c->lvl[l] + pos];
        if (!x) return BD_NONE; /* only in a corrupted state */
        pos = (pos << 6) | (uint64_t)ctz64(x);
    }
    return pos;
}

/* Bits at positions that are multiples of s (a power of two <= 64) in a word. */
static inline uint64_t stride_mask(uint64_t s)
{
    uint64_t m = 1;
    for (uint64_t sh = s; sh < 64; sh <<= 1) m |= m << sh;
    return m;
}

/* The lowest set bit whose index is a multiple of stride (a power of two). */
static uint64_t hb_first_strided(const uint64_t *w, const bd_class_t *c, uint64_t stride)
{
    uint64_t pos = 0;
    uint64_t sm = stride <= 64 ? stride_mask(stride) : 1;
    while (pos < c->nbits) {
        uint64_t i = hb_next(w, c, pos);
        if (i == BD_NONE) return BD_NONE;
        if (stride <= 64) {
            uint64_t x = w[c->lvl[0] + (i >> 6)] & (~0ull << (i & 63)) & sm;
            if (x) return (i & ~(uint64_t)63) | (uint64_t)ctz64(x);
            pos = (i | 63) + 1;
        } else {
            if ((i & (stride - 1)) == 0) return i;
            uint64_t next = (i | (stride - 1)) + 1;
            if (next <= i) return BD_NONE;
            pos = next;
        }
    }
    return BD_NONE;
}

/* ---- free-set bookkeeping ------------------------------------------------------------ */
/* Mark children 1..fanout-1 of a split free: `first` is child 0's index in class k. */
static inline void put_tail_children(uint64_t *w, const bd_class_t *c, uint32_t fs,
                                     uint64_t first)
{
    uint64_t n = ((uint64_t)1 << fs) - 1;
    if (fs <= 6) /* the group lies in one word */
        hb_or(w, c, 0, first >> 6, range_mask(first + 1, n));
    else
        hb_set_range(w, c, first + 1, n);
}

/* ---- the pending split chain -------------------------------------------------------
 * Splitting block (top, i) down to class k0 frees, at each class l in [k0, top), the
 * fanout-1 siblings of the block's ancestor there; freeing the block merges them all
 * back.  Instead of writing those blocks into the bitmaps, the last split is kept as a
 * record (chain_k0, chain_top, chain_slot): its blocks are free, counted in hdr.nfree
 * and hdr.nonempty, but not in the bitmaps.  Freeing the bottom block collapses the
 * whole chain in O(1) (alloc + free of a lone block costs no split or merge walk);
 * any other change first writes the chain into the bitmaps (materialize), and a call
 * that fails after that takes it out again (dematerialize), byte for byte.  (The
 * undo of a failed alloc_many frees in reverse: the same state, but a chain written
 * out by the batch stays written out -- equal stats, segments and check(), another
 * snapshot.) */
typedef struct bd_chain {
    uint32_t k0, top;
    uint64_t slot, prev;
} bd_chain_t;

/* Write the pending chain (if any) into the bitmaps; *saved says what it was. */
static int materialize(void *st, bd_chain_t *saved)
{
    bd_hdr_t *x = hdr(st);
    if (!x->chain_top) return 0;
    *saved = (bd_chain_t){x->chain_k0, x->chain_top, x->chain_slot, x->chain_prev};
    uint64_t *w = words(st);
    const bd_class_t *c = ccls(st);
    uint32_t fs = x->fan_shift;
    for (uint32_t l = saved->k0; l < saved->top; l++)
        put_tail_children(w, &c[l], fs, saved->slot >> cshift(x, l));
    x->chain_k0 = x->chain_top = 0;
    x->chain_slot = x->chain_prev = 0;
    return 1;
}

/* Undo materialize(): the bitmaps and the record as they were before it. */
static void dematerialize(void *st, const bd_chain_t *saved)
{
    bd_hdr_t *x = hdr(st);
    uint64_t *w = words(st);
    const bd_class_t *c = ccls(st);
    uint32_t fs = x->fan_shift;
    for (uint32_t l = saved->k0; l < saved->top; l++) {
        uint64_t i = saved->slot >> cshift(x, l);
        if (fs <= 6) hb_andnot(w, &c[l], 0, i >> 6, range_mask(i + 1, ((uint64_t)1 << fs) - 1));
        else hb_clear_range(w, &c[l], i + 1, ((uint64_t)1 << fs) - 1);
    }
    x->chain_k0 = saved->k0;
    x->chain_top = saved->top;
    x->chain_slot = saved->slot;
    x->chain_prev = saved->prev;
}

/* Take free block (k, i) and split it down to class k0 (its first descendant): the
 * split becomes the pending chain.  There is no pending chain on entry. */
static inline void take_and_split(void *st, uint32_t k, uint64_t i, uint32_t k0)
{
    bd_hdr_t *x = hdr(st);
    uint32_t fs = x->fan_shift, levels = k - k0;
    uint64_t nonempty = x->nonempty;
    if (hb_andnot(words(st), &ccls(st)[k], 0, i >> 6, BIT[i & 63]))
        nonempty &= ~((uint64_t)1 << k);
    if (levels) {
        uint64_t m = chain_mask(k0, k);
        x->chain_k0 = k0;
        x->chain_top = k;
        x->chain_slot = i << cshift(x, k);
        x->chain_prev = nonempty & m;
        nonempty |= m;
    }
    x->nonempty = nonempty;
    x->nfree += (uint64_t)levels * (((uint64_t)1 << fs) - 1) - 1;
}

/* Clear the fanout-1 siblings of (k, i) (all free); 1 when class k is left empty. */
static inline int take_siblings(uint64_t *w, const bd_class_t *c, uint32_t fs, uint64_t i)
{
    uint64_t f = (uint64_t)1 << fs, g = i & ~(f - 1);
    if (fs <= 6)
        return hb_andnot(w, c, 0, g >> 6, range_mask(g, f) & ~((uint64_t)1 << (i & 63)));
    int empty = 0;
    if (i > g) empty = hb_clear_range(w, c, g, i - g);
    if (g + f > i + 1) empty = hb_clear_range(w, c, i + 1, g + f - i - 1);
    return empty;
}

/* Are the fanout-1 siblings of (k, i) all free?  (Bits beyond nbits are zero, so a
 * group that does not lie inside the class never is.) */
static inline int siblings_free(const uint64_t *w, const bd_class_t *c, uint32_t fs, uint64_t i)
{
    uint64_t f = (uint64_t)1 << fs, g = i & ~(f - 1);
    if (fs <= 6) {
        uint64_t m = range_mask(g, f) & ~((uint64_t)1 << (i & 63));
        return (w[c->lvl[0] + (g >> 6)] & m) == m;
    }
    if (g + f > c->nbits) return 0; /* whole words: stay inside the class */
    return hb_count_range(w, c, g, f) - (uint64_t)hb_test(w, c, i) == f - 1;
}

/* Give block (k, i) back (it is not in the free set), merging complete sibling groups
 * upwards. */
static inline void release(void *st, uint32_t k, uint64_t i)
{
    bd_hdr_t *x = hdr(st);
    uint64_t *w = words(st);
    const bd_class_t *c = ccls(st) + k;
    uint32_t fs = x->fan_shift, top = x->nclasses - 1, k1 = k;
    uint64_t nonempty = x->nonempty, f = (uint64_t)1 << fs;
    if (fs == 1) { /* binary: the sibling is one bit */
        uint64_t kbit = (uint64_t)1 << k;
        for (; k < top; k++, c++, i >>= 1, kbit <<= 1) {
            uint64_t wi = i >> 6, *p = w + c->lvl[0] + wi, v = *p;
            uint64_t m = BIT[(i ^ 1) & 63];
            if (!(v & m)) break;
            *p = v ^= m;
            if (!v) {
                uint32_t nl = c->nlevels;
                if (nl == 1 || (nl == 2 ? !(w[c->lvl[1]] &= ~BIT[wi])
                                        : hb_andnot(w, c, 1, wi >> 6, BIT[wi & 63])))
                    nonempty &= ~kbit;
            }
        }
    } else if (fs <= 6) { /* a sibling group lies in one word */
        uint64_t fm = fs == 6 ? ~0ull : ((uint64_t)1 << f) - 1, gm = 63 & ~(f - 1);
        for (; k < top; k++, c++, i >>= fs) {
            uint64_t wi = i >> 6, *p = w + c->lvl[0] + wi, v = *p;
            uint64_t m = (fm << (i & gm)) ^ ((uint64_t)1 << (i & 63));
            if ((v & m) != m) break;
            *p = v ^= m;
            if (!v) {
                uint32_t nl = c->nlevels;
                if (nl == 1 || (nl == 2 ? !(w[c->lvl[1]] &= ~((uint64_t)1 << wi))
                                        : hb_andnot(w, c, 1, wi >> 6, (uint64_t)1 << (wi & 63))))
                    nonempty &= ~((uint64_t)1 << k);
            }
        }
    } else {
        for (; k < top && siblings_free(w, c, fs, i); k++, c++, i >>= fs)
            if (take_siblings(w, c, fs, i)) nonempty &= ~((uint64_t)1 << k);
    }
    hb_or(w, c, 0, i >> 6, (uint64_t)1 << (i & 63));
    x->nonempty = nonempty | ((uint64_t)1 << k);
    x->nfree = x->nfree + 1 - (uint64_t)(k - k1) * (f - 1);
}

/* ---- the strategy ------------------------------------------------------------------ */
uint64_t mp_buddy_state_size(uint64_t capacity, uint64_t min_block, uint64_t max_block,
                             uint64_t fanout)
{
    bd_plan_t P;
    return mpi_buddy_make_plan(capacity, min_block, max_block, fanout, &P) ? P.size : 0;
}

static void bd_reset(void *st)
{
    mp_head_t *h = st;
    bd_hdr_t *x = hdr(st);
    uint32_t K = x->nclasses, fs = x->fan_shift;
    memset(words(st), 0, 8 * x->nwords);
    memset(reqs(st), 0, 8 * x->nslots);
    memset(tags(st), 0, (x->nslots + 7) & ~(uint64_t)7);
    x->nonempty = 0;
    x->nfree = 0;
    x->chain_k0 = x->chain_top = 0;
    x->chain_slot = x->chain_prev = 0;
    /* greedy carving from offset 0: the base-fanout digits of nslots */
    uint64_t p = 0;
    for (uint32_t k = K; k-- > 0;) {
        uint64_t n = (x->nslots - p) >> (k * fs);
        if (!n) continue;
        hb_set_range(words(st), &cls(st)[k], p >> (k * fs), n);
        x->nfree += n;
        x->nonempty |= (uint64_t)1 << k;
        p += n << (k * fs);
    }
    mpi_head_on_reset(h);
    h->cursor = 0;
}

int mp_buddy_init(void *st, uint64_t capacity, uint64_t min_block, uint64_t max_block,
                  uint64_t fanout)
{
    bd_plan_t P;
    if (!mpi_buddy_make_plan(capacity, min_block, max_block, fanout, &P)) return MP_EINVAL;
    memset(st, 0, P.words_off);
    mp_head_t *h = st;
    mpi_head_init(h, MP_KIND_BUDDY, P.size, P.usable);
    h->param[0] = capacity;
    h->param[1] = min_block;
    h->param[2] = P.max_block;
    h->param[3] = fanout;
    bd_hdr_t *x = hdr(st);
    x->min_shift = P.min_shift;
    x->fan_shift = P.fan_shift;
    x->nclasses = P.nclasses;
    x->nslots = P.nslots;
    x->nwords = P.nwords;
    x->words_off = P.words_off;
    x->req_off = P.req_off;
    x->tag_off = P.tag_off;
    memcpy(cls(st), P.cls, P.nclasses * sizeof(bd_class_t));
    bd_reset(st);
    h->peak_used = h->high_water = 0;
    return MP_OK;
}

unsigned mp_buddy_classes(const void *st) { return chdr(st)->nclasses; }

uint64_t mp_buddy_class_size(const void *st, unsigned k)
{
    const bd_hdr_t *x = chdr(st);
    return k < x->nclasses ? csize(x, k) : 0;
}

/* The smallest class whose blocks hold `size`; MP_EINVAL for 0 or beyond max_block. */
static inline int class_of(const bd_hdr_t *x, uint64_t size, unsigned *k)
{
    if (size == 0 || size > csize(x, x->nclasses - 1)) return MP_EINVAL;
    if (size <= ((uint64_t)1 << x->min_shift)) {
        *k = 0;
        return MP_OK;
    }
    uint32_t above = (uint32_t)msb64(size - 1) + 1 - x->min_shift; /* ceil(log2(size)) - ms */
    *k = x->fan_shift == 1 ? above : (above + x->fan_shift - 1) / x->fan_shift;
    return MP_OK;
}

int mp_buddy_class_of(const void *st, uint64_t size, unsigned *k)
{
    return class_of(chdr(st), size, k);
}

/* The free block alloc(size of class k0, align) takes: class in *kc, index returned.
 * Every block of a class whose size is >= align is aligned, so:
 *   align <= max_block: the lowest block of the smallest non-empty class >= k0 whose
 *     size is >= align (O(log n); smaller classes are not searched for the odd
 *     aligned block: that would be a scan);
 *   align > max_block: only offsets that are multiples of align qualify (few: at most
 *     one per top-level block), so each class from k0 up is searched with a stride
 *     for its lowest such block. */
static uint64_t bd_find(const void *st, uint32_t k0, uint64_t align, uint32_t *kc)
{
    const bd_hdr_t *x = chdr(st);
    uint64_t mask = x->nonempty & (~0ull << k0);
    if (!mask) return BD_NONE;
    uint32_t top = x->nclasses - 1;
    if (align <= csize(x, top)) {
        uint32_t a = (uint32_t)ctz64(align), ka = k0;
        if (a > x->min_shift + cshift(x, k0))
            ka = (a - x->min_shift + x->fan_shift - 1) / x->fan_shift;
        mask &= ~0ull << ka;
        if (!mask) return BD_NONE;
        uint32_t k = (uint32_t)ctz64(mask);
        *kc = k;
        return hb_first(cwords(st), &ccls(st)[k]);
    }
    for (uint32_t k = k0; k <= top; k++) {
        if (!((mask >> k) & 1)) continue;
        uint64_t stride = align >> (x->min_shift + cshift(x, k));
        uint64_t i = hb_first_strided(cwords(st), &ccls(st)[k], stride);
        if (i != BD_NONE) {
            *kc = k;
            return i;
        }
    }
    return BD_NONE;
}

static int bd_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    bd_hdr_t *x = hdr(st);
    unsigned k0;
    if (class_of(x, size, &k0)) return MP_ENOSPACE;
    uint32_t k;
    uint64_t i;
    bd_chain_t saved;
    if (align <= csize(x, k0)) { /* every block of class >= k0 is aligned */
        uint64_t mask = x->nonempty & (~0ull << k0);
        if (!mask) return MP_ENOSPACE;
        materialize(st, &saved);
        k = (uint32_t)ctz64(mask);
        i = hb_first(words(st), &ccls(st)[k]);
    } else {
        int had = materialize(st, &saved);
        i = bd_find(st, k0, align, &k);
        if (i == BD_NONE) {
            if (had) dematerialize(st, &saved);
            return MP_ENOSPACE;
        }
    }
    mpi_assert(k >= k0 && k < x->nclasses && i < ccls(st)[k].nbits);
    mpi_assert(hb_test(cwords(st), &ccls(st)[k], i) && !x->chain_top); /* free, written out */
    take_and_split(st, k, i, k0);
    uint64_t j = i << cshift(x, k); /* slot */
    tags(st)[j] = (uint8_t)(k0 + 1);
    reqs(st)[j] = size;
    uint64_t bsize = csize(x, k0), off = j << x->min_shift;
    mpi_head_on_alloc((mp_head_t *)st, off + bsize, bsize, size);
    *out = off;
    return MP_OK;
}

/* The slot of the allocated block at offset, or BD_NONE. */
static inline uint64_t lookup(const void *st, uint64_t offset)
{
    const bd_hdr_t *x = chdr(st);
    if (offset & (((uint64_t)1 << x->min_shift) - 1)) return BD_NONE;
    uint64_t j = offset >> x->min_shift;
    if (j >= x->nslots || !ctags(st)[j]) return BD_NONE;
    return j;
}

static int bd_free(void *st, uint64_t offset)
{
    uint64_t j = lookup(st, offset);
    if (j == BD_NONE) return MP_ENOTALLOC;
    mp_head_t *h = st;
    bd_hdr_t *x = hdr(st);
    uint32_t k = tags(st)[j] - 1u;
    mpi_assert(k < x->nclasses && reqs(st)[j] >= 1);
    mpi_head_on_free(h, csize(x, k), reqs(st)[j]);
    tags(st)[j] = 0;
    reqs(st)[j] = 0;
    if (x->chain_top && j == x->chain_slot) { /* the bottom of the chain: it all merges */
        uint32_t top = x->chain_top;
        x->nonempty = (x->nonempty & ~chain_mask(k, top)) | x->chain_prev;
        x->nfree -= (uint64_t)(top - k) * (((uint64_t)1 << x->fan_shift) - 1);
        x->chain_k0 = x->chain_top = 0;
        x->chain_slot = x->chain_prev = 0;
        release(st, top, j >> cshift(x, top));
        return MP_OK;
    }
    bd_chain_t saved;
    materialize(st, &saved);
    release(st, k, j >> cshift(x, k));
    return MP_OK;
}

static int bd_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    uint64_t j = lookup(st, offset);
    if (j == BD_NONE) return MP_ENOTALLOC;
    *out = csize(chdr(st), ctags(st)[j] - 1u);
    return MP_OK;
}

/* The class the block (k, i) would reach if it were freed now, and that block's index. */
static uint32_t merge_reach(const void *st, uint32_t k, uint64_t i, uint64_t *at)
{
    const bd_hdr_t *x = chdr(st);
    const uint64_t *w = cwords(st);
    uint32_t fs = x->fan_shift;
    while (k + 1 < x->nclasses && siblings_free(w, &ccls(st)[k], fs, i)) {
        i >>= fs;
        k++;
    }
    *at = i;
    return k;
}

static int bd_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    uint64_t j = lookup(st, offset);
    if (j == BD_NONE) return MP_ENOTALLOC;
    mp_head_t *h = st;
    bd_hdr_t *x = hdr(st);
    uint32_t k = tags(st)[j] - 1u, fs = x->fan_shift;
    unsigned kn;
    if (class_of(x, size, &kn)) return MP_ENOSPACE;
    uint64_t old_req = reqs(st)[j];
    *out = offset;
    if (kn == k) { /* same class */
        mpi_head_on_resize(h, offset + csize(x, k), csize(x, k), csize(x, k), old_req, size);
        reqs(st)[j] = size;
        return MP_OK;
    }
    bd_chain_t saved;
    int had = materialize(st, &saved);
    if (kn < k) { /* shrink: keep the first descendant, free the tail buddies */
        uint64_t i = j >> cshift(x, k);
        for (uint32_t l = k; l > kn; l--) {
            i <<= fs;
            put_tail_children(words(st), &ccls(st)[l - 1], fs, i);
        }
        x->nonempty |= (((uint64_t)1 << (k - kn)) - 1) << kn;
        x->nfree += (uint64_t)(k - kn) * (((uint64_t)1 << fs) - 1);
        tags(st)[j] = (uint8_t)(kn + 1);
        reqs(st)[j] = size;
        mpi_head_on_resize(h, offset + csize(x, kn), csize(x, k), csize(x, kn), old_req, size);
        return MP_OK;
    }
    /* grow in place: the first descendant of its class-kn ancestor, the rest free */
    const uint64_t *w = cwords(st);
    int in_place = (j & (((uint64_t)1 << cshift(x, kn)) - 1)) == 0;
    for (uint32_t l = k; in_place && l < kn; l++)
        in_place = siblings_free(w, &ccls(st)[l], fs, j >> cshift(x, l));
    if (in_place) {
        for (uint32_t l = k; l < kn; l++)
            if (take_siblings(words(st), &ccls(st)[l], fs, j >> cshift(x, l)))
                x->nonempty &= ~((uint64_t)1 << l);
        x->nfree -= (uint64_t)(kn - k) * (((uint64_t)1 << fs) - 1);
        tags(st)[j] = (uint8_t)(kn + 1);
        reqs(st)[j] = size;
        mpi_head_on_resize(h, offset + csize(x, kn), csize(x, k), csize(x, kn), old_req, size);
        return MP_OK;
    }
    /* move: a new block while the old one is held */
    uint64_t at;
    if (bd_alloc(st, size, align, &at) == MP_OK) {
        bd_free(st, offset);
        *out = at;
        return MP_OK;
    }
    /* (bd_alloc failed: it changed nothing, there was no chain to write out) */
    /* move into the block that freeing this one merges into: it is the only new
     * candidate, and alloc takes its first descendant -- if bd_find would take it */
    uint64_t mi;
    uint32_t km = merge_reach(st, k, j >> cshift(x, k), &mi);
    uint64_t moff = (mi << cshift(x, km)) << x->min_shift;
    int eligible = align <= csize(x, x->nclasses - 1) ? csize(x, km) >= align
                                                      : (moff & (align - 1)) == 0;
    if (km < kn || !eligible) {
        if (had) dematerialize(st, &saved);
        return MP_ENOSPACE;
    }
    bd_free(st, offset);
    int rc = bd_alloc(st, size, align, &at);
    if (rc != MP_OK || at != moff) return MP_ECORRUPT; /* unreachable on a valid state */
    *out = at;
    return MP_OK;
}

/* ---- queries ------------------------------------------------------------------------- */
/* The class of the free block that starts at slot j, or -1. */
int mpi_buddy_free_class_at(const void *st, uint64_t j)
{
    const bd_hdr_t *x = chdr(st);
    const uint64_t *w = cwords(st);
    if (x->chain_top && j > x->chain_slot &&
        j - x->chain_slot < ((uint64_t)1 << cshift(x, x->chain_top))) {
        /* in the pending chain: j = slot + c * fanout**l, 1 <= c < fanout */
        uint64_t d = j - x->chain_slot;
        uint32_t l = (uint32_t)ctz64(d) / x->fan_shift;
        if ((d >> cshift(x, l)) < ((uint64_t)1 << x->fan_shift) && l >= x->chain_k0) return (int)l;
    }
    for (uint32_t k = x->nclasses; k-- > 0;) {
        uint32_t sh = cshift(x, k);
        if (sh < 64 && (j & (((uint64_t)1 << sh) - 1))) continue;
        uint64_t i = j >> sh;
        if (i < ccls(st)[k].nbits && hb_test(w, &ccls(st)[k], i)) return (int)k;
    }
    return -1;
}

static int bd_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    const bd_hdr_t *x = chdr(st);
    const uint8_t *t = ctags(st);
    uint64_t j = 0;
    while (j < x->nslots) {
        int k, allocated = t[j] != 0;
        if (allocated) k = t[j] - 1;
        else if ((k = mpi_buddy_free_class_at(st, j)) < 0) return MP_ECORRUPT;
        int r = fn(ctx, j << x->min_shift, csize(x, (uint32_t)k), allocated);
        if (r) return r;
        j += (uint64_t)1 << cshift(x, (uint32_t)k);
    }
    return MP_OK;
}

static uint64_t bd_largest(const void *st)
{
    const bd_hdr_t *x = chdr(st);
    return x->nonempty ? csize(x, (uint32_t)msb64(x->nonempty)) : 0;
}

static uint64_t bd_free_ranges(const void *st) { return chdr(st)->nfree; }

static int bd_why_nospace(const void *st, uint64_t size, uint64_t align, char *buf, size_t len)
{
    (void)align; /* blocks are aligned to their class size: alignment costs a class */
    const bd_hdr_t *x = chdr(st);
    uint64_t top = csize(x, x->nclasses - 1);
    if (size <= top) return 0;
    snprintf(buf, len, "larger than the largest block class (max_block = %llu bytes)",
             (unsigned long long)top);
    return 1;
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
MPI_OPS_TABLE(buddy,
    .name = "buddy",
    .kind = MP_KIND_BUDDY,
    .alloc = bd_alloc,
    .free = bd_free,
    .realloc = bd_realloc,
    .size_of = bd_size_of,
    .reset = bd_reset,
    .check = mpi_buddy_check,
    .walk = bd_walk,
    .largest_free = bd_largest,
    .available = mpi_head_available,
    .free_ranges = bd_free_ranges,
    .why_nospace = bd_why_nospace);
