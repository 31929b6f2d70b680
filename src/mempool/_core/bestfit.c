/*
 * bestfit.c -- exact best fit over offsets (exact sizes, O(log n)).
 *
 * Algorithm (orderly-allocator's ordered set by (size, offset); context-allocator's
 * binary-search-tree allocator), kept inside the state and filed by size class:
 *   - Free ranges are filed in the segregated size bins of ranges_bins.h (TLSF's map:
 *     a size below 64 has a bin of its own, above there are 32 bins per power of
 *     two), and the ranges of one bin form an AVL tree ordered by the key
 *     (size, offset).  Keys are unique (free ranges have distinct offsets); bins
 *     partition the sizes, so key order is bin order, then tree order.  Each bin
 *     also keeps its leftmost node (its smallest key).
 *   - alloc(size, align) takes the free range with the smallest size in which an
 *     aligned placement of `size` fits (pad = align_up(offset, align) - offset;
 *     it fits when range.size - pad >= size), the lowest offset among equal sizes:
 *     the first node in key order at or after (size, 0) that fits.  This is an
 *     exact aligned fit, unlike orderly-allocator, which asks for size + align - 1
 *     up front and so skips aligned exact fits.
 *       align 1: every range of size >= size fits, so the answer is the lower bound
 *       of (size, 0) in the request's own bin, else the leftmost node of the next
 *       non-empty bin (bitmaps, O(1)).
 *       align > 1: every range in a bin at or above bin_up(size + align - 1) fits,
 *       so only the bins from the request's own up to that one are searched, in
 *       order, then the next non-empty bin's leftmost node is the answer.
 *   - Searching the bins in that window one range at a time is what made aligned
 *     requests slow: the gaps that alignment leaves in front of aligned ranges are
 *     small free ranges that never hold an aligned request (their pad is their
 *     size), and ffmpeg's align-64 requests walked ~240 of them per alloc.  So every
 *     tree node also keeps, for the alignments 2^BF_LEVEL[j] (16, 64, 256, 4096),
 *     the largest aligned usable size in its subtree, capped at BF_CAP (32 KiB - 1):
 *         use_j(n) = min(n.size - pad_j(n.offset), BF_CAP)  (0 when pad > size)
 *         aug_j    = max of use_j over the subtree
 *     (four 16-bit lanes of one word, so a node's augment is a few word operations
 *     from its children's).  A request of size <= BF_CAP with align >= 16 uses the
 *     largest level L with 2^L <= align: a bin or subtree whose aug is below the
 *     request holds no fit (pad grows with the alignment), so it is skipped whole.
 *     When 2^L == align that decides exactly and a search is one descent; for other
 *     alignments it prunes less but stays exact.  Requests with align < 16 or size >
 *     BF_CAP walk their window in key order (it spans fewer than 16 sizes, or is
 *     sparse).  The cap keeps the augments cheap: big ranges change at nearly every
 *     alloc and free, and uncapped their maxima would change all the way up.
 *   - A free range that changes in place (carved, or absorbing a freed neighbour)
 *     keeps its tree position when it stays in its bin and its new key is still
 *     between its in-order neighbours; only the augments on its path up are
 *     refreshed, and only until they stop changing.
 *   - Most bins hold one range or none, and a range that is carved or absorbs a
 *     neighbour usually changes bin: filing into an empty bin and taking out the only
 *     range of a bin are a few stores (bf_file / bf_unfile), not a descent and a walk up.
 *   - The trees' upkeep is most of the work (issue 15): the gaps that aligned
 *     requests leave in front of their ranges fill the exact bins (sizes 1..63),
 *     where each gap is filed when its range is handed out and taken out again when
 *     the range is freed (ffmpeg-x264-aac: 0.7 of each per op, trees ~6 deep).  So:
 *     in an exact bin keys differ only by offset and the descent compares offsets
 *     alone; a key below the bin's first is hung left of it without a descent
 *     (python3-compileall: half of the exact-bin inserts); the walks up after an
 *     insert or a removal carry the height and augment of the subtree they come
 *     from, so each level reads only the other child, and an insert's rotations
 *     take their heights from AVL's insertion cases instead of from the children;
 *     the lanes are maxed with one pmaxsw where SSE2 is there (x86-64).
 *   - largest_free is the rightmost node of the last non-empty bin; free merges
 *     neighbours at once (ranges.h).
 *
 * Layout of the free index (after mp_head_t and mp_rset_t, see ranges.h):
 *
 *   +--------+---------------+---------------+
 *   | map    | root[RS_BINS] | first[RS_BINS]|
 *   | binmap | uint32_t      | uint32_t      |
 *   +--------+---------------+---------------+
 *   root[b]: the root of bin b's tree, first[b]: its leftmost node (MP_NIL: empty).
 *
 *   Nodes are 64 bytes (one cache line): mp_rnode_t, then the augments.  Each free
 *   node carries its tree links, height and augments:
 *
 *     node.link[0] = left child   (MP_NIL when none)
 *     node.link[1] = right child  (MP_NIL when none)
 *     node.link[2] = parent       (MP_NIL for the root of its bin)
 *     node.flags   = RN_INUSE | RN_FREE | height << 8   (a leaf has height 1)
 *     aug          = subtree max of use_j in lane j (bits 16j..16j+15)
 *     own          = this node's own use_j lanes (cached: it changes with the key)
 *     spare        unused (nodes are 64 bytes so that each is one cache line)
 *
 *     bin 40:       (40,o9)            bin 70 (sizes 70..71):   (70,o40)
 *                   /     \                                      /     \
 *              (40,o4)   (40,o30)                         (70,o12)   (71,o0)
 *
 * Invariants (bestfit_fidx_check, plus those of ranges.h):
 *  B0. Bit sl of map.sl[fl] is set <=> root[fl * 32 + sl] != MP_NIL; bit fl of map.fl
 *      is set <=> map.sl[fl] != 0; no bits beyond RS_FL_COUNT.  first[b] is the
 *      leftmost node of bin b's tree (MP_NIL for an empty bin).
 *  B1. In-order traversal of a bin's tree visits keys (size, offset) strictly
 *      increasing, and every size maps (rounded down) to that bin.
 *  B2. Every child's parent link names the node that links to it; a root's
 *      parent is MP_NIL; a node's two children differ (unless both MP_NIL).
 *  B3. Stored height == 1 + max(height(left), height(right)), height(MP_NIL) == 0,
 *      and |height(left) - height(right)| <= 1 at every node.
 *  B4. Every tree node is below the watermark and is a free, in-use node whose
 *      flags hold no bits beyond RN_INUSE, RN_FREE and the height (so set_height
 *      writes the flags whole).
 *  B5. The trees hold exactly nfree nodes (so, with ranges.h, exactly the free ones).
 *  B7. Every tree node's own == its use_j lanes, and its aug == the lane-wise max
 *      of own and its children's aug.
 * The height of an AVL tree of n < 2^32 nodes is below 47, so 8 bits hold it and
 * the check can bound its recursion at BF_MAX_DEPTH.
 */
#include "ranges.h"
#include "ranges_bins.h"
#include "replay_loop.h"

#if defined(__SSE2__) && defined(__x86_64__)
#include <emmintrin.h>
#endif

/* The augment: four 16-bit lanes of one word, lane j for alignment 2^BF_LEVEL[j],
 * each value capped at BF_CAP (so lanes never carry into each other). */
enum { BF_LEVELS = 4 };

typedef struct bf_index {
    rs_binmap_t map;             /* which bins are non-empty                      */
    uint32_t root[RS_BINS];      /* root of each bin's tree                       */
    uint32_t first[RS_BINS];     /* leftmost node of each bin's tree              */
} bf_index_t;
static const unsigned BF_LEVEL[BF_LEVELS] = {4, 6, 8, 12}; /* 16, 64, 256, 4096 */
#define BF_CAP 0x7fffu
#define BF_LANE_TOP 0x8000800080008000ull
#define BF_ALL_CAP 0x7fff7fff7fff7fffull
#define BF_LANES_1 0x0001000100010001ull   /* x * this: x in every lane (x < 2^16)  */
#define BF_PAD_MASKS 0x0fff00ff003f000full /* 2^BF_LEVEL[j] - 1 in lane j          */

typedef struct bf_node {
    mp_rnode_t n;   /* what ranges.h sees                                    */
    uint64_t aug;   /* free nodes: subtree max of use_j, lane j (see above)  */
    uint64_t own;   /* free nodes: this node's own use_j lanes (own_aug)      */
    uint64_t spare; /* unused: a node is one cache line                      */
} bf_node_t;
_Static_assert(sizeof(bf_node_t) == 64, "a BestFit node is one cache line");

#define BF_AREA ((sizeof(bf_index_t) + 7) & ~(size_t)7)
#define BF_HSHIFT 8
#define BF_HMASK (0xffu << BF_HSHIFT)
#define BF_MAX_DEPTH 64 /* > the height of any AVL tree of fewer than 2^32 nodes */
#define BF_INLINE static inline __attribute__((always_inline))

enum { L = 0, R = 1, P = 2 };

/* Hide x's value from the optimiser: a descent then takes its last step's side again
 * after the loop (one compare) instead of keeping it in a register at every level. */
#if defined(__GNUC__)
#define BF_OPAQUE(x) __asm__("" : "+r"(x))
#else
#define BF_OPAQUE(x) ((void)0)
#endif

static const mp_fidx_t bestfit_fidx;

static inline bf_index_t *idx(void *st) { return (bf_index_t *)rs_area(st); }
static inline const bf_index_t *cidx(const void *st) { return (const bf_index_t *)rs_carea(st); }
static inline bf_node_t *bnodes(void *st) { return (bf_node_t *)rs_nodes(st, &bestfit_fidx); }
static inline const bf_node_t *cbnodes(const void *st)
{
    return (const bf_node_t *)rs_cnodes(st, &bestfit_fidx);
}

static inline unsigned height(const bf_node_t *nodes, uint32_t i)
{
    return i == MP_NIL ? 0 : (nodes[i].n.flags & BF_HMASK) >> BF_HSHIFT;
}

/* A filed node's flags are RN_INUSE | RN_FREE and its height, nothing else (B4):
 * they are written whole, not read first. */
static inline void set_height(bf_node_t *x, unsigned h)
{
    x->n.flags = RN_INUSE | RN_FREE | (uint32_t)h << BF_HSHIFT;
}

/* The lanes of use_j(n): for each level, the largest request that an aligned
 * placement at 2^BF_LEVEL[j] fits in n, capped at BF_CAP. */
static inline uint64_t use_lane(const mp_rnode_t *n, uint64_t mask, unsigned j)
{
    uint64_t pad = (0 - n->offset) & mask;
    uint64_t use = n->size >= pad ? n->size - pad : 0;
    return (use < BF_CAP ? use : BF_CAP) << (16 * j);
}

static inline uint64_t own_aug(const mp_rnode_t *n)
{
    _Static_assert(BF_LEVELS == 4, "own_aug spells the levels out");
    if (n->size >= BF_CAP + ((uint64_t)1 << BF_LEVEL[BF_LEVELS - 1])) return BF_ALL_CAP;
    if (n->size <= BF_CAP) {
        /* all four at once: pad_j = -offset mod 2^BF_LEVEL[j] is the low 16 bits of
         * -offset, copied to every lane and masked; then size - pad_j in each lane
         * (size < 2^15: no borrow across lanes; a lane whose top bit is clear after
         * the subtraction had pad > size) */
        uint64_t pads = ((0 - n->offset) & 0xffffu) * BF_LANES_1 & BF_PAD_MASKS;
#if defined(__SSE2__) && defined(__x86_64__)
        /* saturating: max(size - pad, 0) in each lane */
        return (uint64_t)_mm_cvtsi128_si64(_mm_subs_epu16(
            _mm_cvtsi64_si128((long long)(n->size * BF_LANES_1)),
            _mm_cvtsi64_si128((long long)pads)));
#else
        uint64_t d = (n->size * BF_LANES_1 | BF_LANE_TOP) - pads;
        uint64_t keep = ((d & BF_LANE_TOP) >> 15) * 0x7fffu;
        return d & keep;
#endif
    }
    return use_lane(n, (1u << 4) - 1, 0) | use_lane(n, (1u << 6) - 1, 1) |
           use_lane(n, (1u << 8) - 1, 2) | use_lane(n, (1u << 12) - 1, 3);
}

/* Lane-wise max of two augments.  With SSE2 (every x86-64) one pmaxsw (lanes <=
 * BF_CAP are non-negative as signed 16-bit); else the lanes are compared in one word
 * (the subtraction never borrows across lanes, and its top bit per lane says a >= b). */
static inline uint64_t lanes_max(uint64_t a, uint64_t b)
{
#if defined(__SSE2__) && defined(__x86_64__)
    __m128i m = _mm_max_epi16(_mm_cvtsi64_si128((long long)a), _mm_cvtsi64_si128((long long)b));
    return (uint64_t)_mm_cvtsi128_si64(m);
#else
    uint64_t ge = ((a | BF_LANE_TOP) - b) & BF_LANE_TOP;
    uint64_t m = (ge >> 15) * 0xffffu;
    return (a & m) | (b & ~m);
#endif
}

static inline unsigned lane(uint64_t aug, unsigned j)
{
    return (unsigned)(aug >> (16 * j)) & 0xffffu;
}



/* Recompute height and augment of node x from its children l, r (heights hl, hr). */
static inline void update_with(bf_node_t *nodes, bf_node_t *x, uint32_t l, uint32_t r,
                               unsigned hl, unsigned hr)
{
    set_height(x, 1 + (hl > hr ? hl : hr));
    uint64_t a = x->own;
    if (l != MP_NIL) a = lanes_max(a, nodes[l].aug);
    if (r != MP_NIL) a = lanes_max(a, nodes[r].aug);
    x->aug = a;
}

static inline void update(bf_node_t *nodes, uint32_t i)
{
    bf_node_t *x = &nodes[i];
    uint32_t l = x->n.link[L], r = x->n.link[R];
    update_with(nodes, x, l, r, height(nodes, l), height(nodes, r));
}

/* (a.size, a.offset) < (b.size, b.offset) */
static inline int key_less(const mp_rnode_t *a, const mp_rnode_t *b)
{
    return a->size < b->size || (a->size == b->size && a->offset < b->offset);
}

/* (size, off) > (q.size, q.offset): the side of q that the key (size, off) is on */
static inline int key_after(uint64_t size, uint64_t off, const mp_rnode_t *q)
{
    return size > q->size || (size == q->size && off > q->offset);
}

/* Make `to` the child of `parent` where `from` was (or the root of bin b). */
static inline void replace_child(bf_index_t *x, bf_node_t *nodes, unsigned b, uint32_t parent,
                                 uint32_t from, uint32_t to)
{
    if (parent == MP_NIL) x->root[b] = to;
    else if (nodes[parent].n.link[L] == from) nodes[parent].n.link[L] = to;
    else nodes[parent].n.link[R] = to;
    if (to != MP_NIL) nodes[to].n.link[P] = parent;
}

/* Lift the child of n on side d into n's place; returns the new subtree root. */
static uint32_t rotate(bf_index_t *x, bf_node_t *nodes, unsigned b, uint32_t n, int d)
{
    uint32_t c = nodes[n].n.link[d];
    uint32_t inner = nodes[c].n.link[!d];
    uint32_t p = nodes[n].n.link[P];
    nodes[n].n.link[d] = inner;
    if (inner != MP_NIL) nodes[inner].n.link[P] = n;
    nodes[c].n.link[!d] = n;
    nodes[n].n.link[P] = c;
    replace_child(x, nodes, b, p, n, c);
    update(nodes, n);
    update(nodes, c);
    return c;
}

/* The augment of subtree i (0 for none: below every lane). */
static inline uint64_t aug_of(const bf_node_t *nodes, uint32_t i)
{
    return i == MP_NIL ? 0 : nodes[i].aug;
}

/* Restore heights, balance and augments from n up to the root of bin b, where
 * everything below n is right and n's child on side dc (c, MP_NIL or not) came out
 * with height hc and augment ac: n itself is recomputed from scratch, and each level
 * reads only the child the walk does not come from (it carries the other).  Stops
 * once a subtree comes out with the height and augment it had (nothing above it can
 * change then), but not before node `must` (MP_NIL: none) is recomputed: a node
 * moved into the path whose stored values are its predecessor's. */
BF_INLINE void fixup(bf_index_t *x, bf_node_t *nodes, unsigned b, uint32_t n, int dc, unsigned hc,
                     uint64_t ac, uint32_t must)
{
    for (;;) {
        bf_node_t *y = &nodes[n];
        uint32_t flags = y->n.flags, sib = y->n.link[!dc];
        uint64_t old = y->aug, a;
        unsigned hs = height(nodes, sib), h;
        if (n == must) must = MP_NIL;
        if (__builtin_expect(hs > hc + 1 || hc > hs + 1, 0)) {
            int d = hs > hc ? !dc : dc; /* the heavy side */
            uint32_t c = y->n.link[d];
            if (height(nodes, nodes[c].n.link[!d]) > height(nodes, nodes[c].n.link[d]))
                rotate(x, nodes, b, c, !d); /* double rotation: straighten the zig-zag */
            n = rotate(x, nodes, b, n, d);
            y = &nodes[n];
            h = (y->n.flags & BF_HMASK) >> BF_HSHIFT;
            a = y->aug;
        } else {
            h = 1 + (hs > hc ? hs : hc);
            a = lanes_max(lanes_max(y->own, ac), aug_of(nodes, sib));
            set_height(y, h);
            y->aug = a;
        }
        /* same height, same augment */
        if (must == MP_NIL && y->n.flags == flags && a == old) return;
        uint32_t up = y->n.link[P];
        if (up == MP_NIL) return;
        dc = nodes[up].n.link[R] == n;
        hc = h;
        ac = a;
        n = up;
    }
}

/* The subtrees from n up gained a node whose own augment is `own` (their heights
 * are settled): lane-max it into their augments until one does not change. */
static inline void raise_augs(bf_node_t *nodes, uint32_t n, uint64_t own)
{
    for (; n != MP_NIL; n = nodes[n].n.link[P]) {
        uint64_t a = lanes_max(nodes[n].aug, own);
        if (a == nodes[n].aug) return;
        nodes[n].aug = a;
    }
}

/* File free node i (own computed here) in bin b, whose tree is not empty. */
static void bf_insert_bin(bf_index_t *x, bf_node_t *nodes, uint32_t i, unsigned b)
{
    bf_node_t *z = &nodes[i];
    uint64_t size = z->n.size, off = z->n.offset;
    const bf_node_t *q = &nodes[x->first[b]];
    int d;
    /* Descend to the leaf slot of the key (keys are unique: no ties), by node address
     * (the index is taken once, at the end).  In an exact bin every key has the same
     * size, so the offsets alone decide.  A key below the bin's smallest (python3-
     * compileall: half of the exact-bin inserts) hangs left of that one (it has no
     * left child) without a descent, and only such a key becomes the smallest. */
    if (b < RS_EXACT ? off < q->n.offset : !key_after(size, off, &q->n)) {
        d = L;
        x->first[b] = i;
    } else if (b < RS_EXACT) {
        for (q = &nodes[x->root[b]];;) {
            uint32_t c = q->n.link[off > q->n.offset];
            if (c == MP_NIL) break;
            q = &nodes[c];
        }
        BF_OPAQUE(q);
        d = off > q->n.offset;
    } else {
        for (q = &nodes[x->root[b]];;) {
            uint32_t c = q->n.link[key_after(size, off, &q->n)];
            if (c == MP_NIL) break;
            q = &nodes[c];
        }
        BF_OPAQUE(q);
        d = key_after(size, off, &q->n);
    }
    uint32_t p = (uint32_t)(q - nodes), c;
    uint64_t own = own_aug(&z->n);
    z->n.link[L] = z->n.link[R] = MP_NIL;
    z->n.link[P] = p;
    z->own = z->aug = own;
    set_height(z, 1);
    nodes[p].n.link[d] = i;
    /* Retrace.  Every subtree on the path gained exactly node i, so its augment is the
     * old one lane-maxed with i's own.  While the subtree below grew, its parent y
     * (height h) grows only when the grown child c (height hc) reached h and the
     * other child is h - 1; when that one is h - 2 a rotation restores y's old
     * height, and when hc < h y keeps its height.  The heights after a rotation
     * follow from AVL's insertion cases, so only augments are read.  Once heights
     * are settled, augments go on up only while they change. */
    unsigned hc = 1;
    int dc = d, dg = d; /* c hangs on side dc of y; c's grown child on side dg */
    c = i;
    for (uint32_t n = p;;) {
        bf_node_t *y = &nodes[n];
        uint64_t a = lanes_max(y->aug, own);
        unsigned h = (y->n.flags & BF_HMASK) >> BF_HSHIFT;
        if (hc != h) { /* hc == h - 1: y keeps its height */
            if (a == y->aug) return;
            y->aug = a;
            raise_augs(nodes, y->n.link[P], own);
            return;
        }
        uint32_t sib = y->n.link[!dc], up = y->n.link[P];
        unsigned hs = height(nodes, sib);
        if (hs + 1 == h) { /* y grows */
            set_height(y, h + 1);
            y->aug = a;
            if (up == MP_NIL) return;
            dg = dc;
            dc = nodes[up].n.link[R] == n;
            c = n;
            hc = h + 1;
            n = up;
            continue;
        }
        /* hs == h - 2: c (height h) is two above sib.  c's grown child is h - 1 and
         * its other child h - 2 (c grew without rotating). */
        uint64_t old = y->aug;
        bf_node_t *C = &nodes[c];
        uint32_t top;
        if (dg == dc) { /* single rotation: c up, y down on side !dc */
            uint32_t inner = C->n.link[!dc];
            y->n.link[dc] = inner;
            if (inner != MP_NIL) nodes[inner].n.link[P] = n;
            C->n.link[!dc] = n;
            y->n.link[P] = c;
            set_height(y, h - 1); /* inner and sib: h - 2 */
            y->aug = lanes_max(lanes_max(y->own, aug_of(nodes, inner)), aug_of(nodes, sib));
            /* c keeps height h: its children are h - 1 */
            top = c;
        } else { /* double rotation: c's grown child g up, c and y under it */
            uint32_t g = C->n.link[!dc];
            bf_node_t *G = &nodes[g];
            uint32_t t1 = G->n.link[dc], t2 = G->n.link[!dc]; /* h - 2 or h - 3 */
            C->n.link[!dc] = t1;
            if (t1 != MP_NIL) nodes[t1].n.link[P] = c;
            y->n.link[dc] = t2;
            if (t2 != MP_NIL) nodes[t2].n.link[P] = n;
            G->n.link[dc] = c;
            G->n.link[!dc] = n;
            C->n.link[P] = g;
            y->n.link[P] = g;
            set_height(C, h - 1); /* c's outer child is h - 2 */
            set_height(y, h - 1); /* sib is h - 2 */
            set_height(G, h);
            C->aug = lanes_max(lanes_max(C->own, aug_of(nodes, C->n.link[dc])),
                               aug_of(nodes, t1));
            y->aug = lanes_max(lanes_max(y->own, aug_of(nodes, t2)), aug_of(nodes, sib));
            top = g;
        }
        nodes[top].aug = a; /* y's old subtree and i */
        replace_child(x, nodes, b, up, n, top);
        if (a != old) raise_augs(nodes, up, own);
        return;
    }
}

/* The in-order neighbour of i on side `d` (R: successor, L: predecessor). */
static inline uint32_t neighbour(const bf_node_t *nodes, uint32_t i, int d)
{
    uint32_t c = nodes[i].n.link[d];
    if (c != MP_NIL) {
        while (nodes[c].n.link[!d] != MP_NIL) c = nodes[c].n.link[!d];
        return c;
    }
    uint32_t p = nodes[i].n.link[P];
    while (p != MP_NIL && nodes[p].n.link[d] == i) {
        i = p;
        p = nodes[p].n.link[P];
    }
    return p;
}
static inline uint32_t successor(const bf_node_t *nodes, uint32_t i) { return neighbour(nodes, i, R); }
static inline uint32_t predecessor(const bf_node_t *nodes, uint32_t i) { return neighbour(nodes, i, L); }

/* Node i's own augment changed (its key, still in order): its augment and those above. */
static void bf_refresh(bf_index_t *x, bf_node_t *nodes, unsigned b, uint32_t i)
{
    uint32_t l = nodes[i].n.link[L];
    fixup(x, nodes, b, i, L, height(nodes, l), aug_of(nodes, l), MP_NIL);
}

/* Take node i out of bin b's tree. */
static void bf_remove_bin(bf_index_t *x, bf_node_t *nodes, uint32_t i, unsigned b)
{
    bf_node_t *z = &nodes[i];
    uint32_t l = z->n.link[L], r = z->n.link[R], p = z->n.link[P];
    uint32_t n, c, moved = MP_NIL;
    int dc = L;
    if (x->first[b] == i) x->first[b] = successor(nodes, i); /* MP_NIL: the bin empties */
    if (l == MP_NIL || r == MP_NIL) {
        c = l != MP_NIL ? l : r;
        n = p;
        if (p == MP_NIL) { /* the root goes: its child (a leaf, or none) is the tree */
            x->root[b] = c;
            if (c != MP_NIL) nodes[c].n.link[P] = MP_NIL;
            else rs_bin_unmark(&x->map, b);
        } else {
            dc = nodes[p].n.link[R] == i;
            nodes[p].n.link[dc] = c;
            if (c != MP_NIL) nodes[c].n.link[P] = p;
        }
    } else {
        /* Two children: the in-order successor s takes i's place in the tree.  The
         * nodes are relinked, not their keys copied: indices name ranges elsewhere. */
        uint32_t s = r;
        while (nodes[s].n.link[L] != MP_NIL) s = nodes[s].n.link[L];
        c = nodes[s].n.link[R];
        if (s == r) {
            n = s; /* s keeps its right subtree */
            dc = R;
        } else {
            uint32_t sp = nodes[s].n.link[P];
            nodes[sp].n.link[L] = c;
            if (c != MP_NIL) nodes[c].n.link[P] = sp;
            nodes[s].n.link[R] = r;
            nodes[r].n.link[P] = s;
            n = sp;
            dc = L;
            moved = s; /* its stored values are i's: the walk recomputes it */
        }
        nodes[s].n.link[L] = l;
        nodes[l].n.link[P] = s;
        replace_child(x, nodes, b, p, i, s);
        set_height(&nodes[s], height(nodes, i)); /* the height its position had */
        nodes[s].aug = z->aug;                    /* likewise, stale */
    }
    z->n.link[L] = z->n.link[R] = z->n.link[P] = MP_NIL;
    set_height(z, 0);
    if (n == MP_NIL) return;
    unsigned hc = height(nodes, c);
    uint64_t ac = aug_of(nodes, c);
    /* two copies: the common one (no node moved) without a check at every level */
    if (moved == MP_NIL) fixup(x, nodes, b, n, dc, hc, ac, MP_NIL);
    else fixup(x, nodes, b, n, dc, hc, ac, moved);
}

/* Most bins hold one range or none (sqlite3-import-index: 81% of the ranges re-filed
 * are alone in their bin and 78% go to an empty one; python3-compileall 67% / 44%;
 * ffmpeg 52% / 52%): those cases are a few stores, done here without the calls, the
 * descent, the retrace and the walk up of the general paths. */

/* File free node i in bin b (bf_insert_bin; an empty bin inline). */
BF_INLINE void bf_file(bf_index_t *x, bf_node_t *nodes, uint32_t i, unsigned b)
{
    if (x->root[b] != MP_NIL) {
        bf_insert_bin(x, nodes, i, b);
        return;
    }
    bf_node_t *y = &nodes[i];
    y->n.link[L] = y->n.link[R] = y->n.link[P] = MP_NIL;
    y->own = y->aug = own_aug(&y->n);
    set_height(y, 1);
    x->root[b] = x->first[b] = i;
    rs_bin_mark(&x->map, b);
}

/* Take node i out of bin b (bf_remove_bin; i alone in its bin inline). */
BF_INLINE void bf_unfile(bf_index_t *x, bf_node_t *nodes, uint32_t i, unsigned b)
{
    bf_node_t *y = &nodes[i];
    if (x->root[b] != i || y->n.link[L] != MP_NIL || y->n.link[R] != MP_NIL) {
        bf_remove_bin(x, nodes, i, b);
        return;
    }
    /* a root's parent is MP_NIL already (B2) */
    x->root[b] = x->first[b] = MP_NIL;
    set_height(y, 0);
    rs_bin_unmark(&x->map, b);
}

BF_INLINE void bf_insert(void *st, uint32_t i)
{
    bf_node_t *nodes = bnodes(st);
    bf_file(idx(st), nodes, i, rs_bin_down(nodes[i].n.size));
}

BF_INLINE void bf_remove(void *st, uint32_t i)
{
    bf_node_t *nodes = bnodes(st);
    bf_unfile(idx(st), nodes, i, rs_bin_down(nodes[i].n.size));
}

/* A free range's key changed in place (the node is still linked where its old key
 * belonged).  When it stays in its bin and its key is still between its in-order
 * neighbours the node stays and only the augments above it are refreshed; else it
 * is re-filed (bf_remove_bin relinks by structure, not by key, so it works on the
 * changed node). */
BF_INLINE void bf_rekey(void *st, uint32_t i, uint64_t old_size)
{
    bf_index_t *x = idx(st);
    bf_node_t *nodes = bnodes(st);
    const mp_rnode_t *n = &nodes[i].n;
    unsigned b0 = rs_bin_down(old_size), b = rs_bin_down(n->size);
    int stays = 0;
    if (b == b0) {
        if (n->size < old_size) { /* the key went down: only the predecessor can pass it */
            uint32_t q = predecessor(nodes, i);
            stays = q == MP_NIL || key_less(&nodes[q].n, n);
        } else if (n->size > old_size) { /* up: only the successor */
            uint32_t q = successor(nodes, i);
            stays = q == MP_NIL || key_less(n, &nodes[q].n);
        }
    }
    if (stays) { /* first[b] stays right too: the order did not change */
        nodes[i].own = own_aug(n);
        bf_refresh(x, nodes, b, i);
    } else {
        bf_unfile(x, nodes, i, b0);
        bf_file(x, nodes, i, b);
    }
}

BF_INLINE int fits(const mp_rnode_t *n, uint64_t size, uint64_t align)
{
    uint64_t pad = (0 - n->offset) & (align - 1); /* align_up(offset) - offset */
    return n->size >= pad && n->size - pad >= size;
}

/* The first node in key order in the subtree at c that fits, skipping subtrees whose
 * lane j of aug is below size (none of their nodes fits: use_j >= the usable size at
 * any alignment >= 2^BF_LEVEL[j]).  Recursion depth <= the tree height. */
static uint32_t bf_search(const bf_node_t *nodes, uint32_t c, uint64_t size, uint64_t align,
                          unsigned j)
{
    while (c != MP_NIL && lane(nodes[c].aug, j) >= size) {
        if (nodes[c].n.size >= size) { /* keys left of c may still be large enough */
            uint32_t r = bf_search(nodes, nodes[c].n.link[L], size, align, j);
            if (r != MP_NIL) return r;
            if (fits(&nodes[c].n, size, align)) return c;
        }
        c = nodes[c].n.link[R];
    }
    return MP_NIL;
}

/* The lower bound of (size, 0) in the tree at c: its first node of size >= size. */
BF_INLINE uint32_t lower_bound(const bf_node_t *nodes, uint32_t c, uint64_t size)
{
    uint32_t best = MP_NIL;
    while (c != MP_NIL) {
        if (nodes[c].n.size >= size) {
            best = c;
            c = nodes[c].n.link[L];
        } else {
            c = nodes[c].n.link[R];
        }
    }
    return best;
}

/* The first node of bin b in key order that fits (see bf_find for level j). */
static uint32_t bf_find_in_bin(const bf_index_t *x, const bf_node_t *nodes, unsigned b,
                               uint64_t size, uint64_t align, int j)
{
    if (j >= 0) return bf_search(nodes, x->root[b], size, align, (unsigned)j);
    /* in key order until one fits; the window ends by size + align - 1 */
    for (uint32_t i = lower_bound(nodes, x->root[b], size); i != MP_NIL; i = successor(nodes, i))
        if (fits(&nodes[i].n, size, align)) return i;
    return MP_NIL;
}

/* bf_find for align > 1, out of line: inlined into the replay loop, its window walk
 * ran short of registers (the level's shift spilled to the stack in the loop over
 * bins), and unaligned requests are the common ones (python3-compileall, sqlite3-
 * import-index: all). */
static __attribute__((noinline)) uint32_t bf_find_aligned(const bf_index_t *x,
                                                          const bf_node_t *nodes, uint64_t size,
                                                          uint64_t align)
{
    unsigned b0 = rs_bin_down(size), b;
    /* Capped augments still decide exactly for size <= BF_CAP: min(max, CAP) < size
     * <=> max < size.  Larger requests, and alignments below the first level, walk. */
    int j = -1;
    if (align >= ((uint64_t)1 << BF_LEVEL[0]) && size <= BF_CAP) {
        j = BF_LEVELS - 1;
        while (align < ((uint64_t)1 << BF_LEVEL[j])) j--;
    }
    unsigned bu = RS_BINS; /* from bin bu on, every range fits */
    uint64_t need = size + (align - 1);
    if (need >= size && rs_bin_up(need, &bu)) {
        /* nothing */
    } else {
        bu = RS_BINS;
    }
    /* The non-empty bins of the window in order; with a level, a bin whose root
     * augment rules it out is passed over without a search (most are: ffmpeg's
     * align-64 requests, three in four below 64 bytes, pass ~9 exact bins of gaps
     * each and search 0.02).  Lane j of an augment is below size <=> aug & lmask <
     * lneed, one and and one compare; without a level nothing is passed over. */
    uint64_t lmask = 0, lneed = 0;
    if (j >= 0) {
        lmask = (uint64_t)0xffff << (16 * j);
        lneed = size << (16 * j);
    }
    /* The first 64 bins of the window as one word: one loop, and one exit to
     * mispredict instead of one per bitmap word (the window of a small request
     * spans three of them; ffmpeg: 1.1 mispredicted branches per op fewer, of 7.0,
     * in callgrind's model).
     * The window holds bin b0 (bu > b0: b0 holds size < need). */
    const rs_binmap_t *m = &x->map;
    unsigned f = b0 >> RS_SLI, sh = b0 & (RS_SL_COUNT - 1);
    uint64_t win = (m->sl[f] | (uint64_t)(f + 1 < RS_FL_COUNT ? m->sl[f + 1] : 0) << 32) >> sh;
    if (sh) win |= (uint64_t)(f + 2 < RS_FL_COUNT ? m->sl[f + 2] : 0) << (64 - sh);
    if (bu - b0 < 64) win &= ((uint64_t)1 << (bu - b0)) - 1;
    for (; win; win &= win - 1) {
        b = b0 + (unsigned)__builtin_ctzll(win);
        if ((nodes[x->root[b]].aug & lmask) < lneed) continue;
        uint32_t r = bf_find_in_bin(x, nodes, b, size, align, j);
        if (r != MP_NIL) return r;
    }
    /* the rest of a wider window (large alignments), a bitmap word at a time */
    unsigned b1 = b0 + 64; /* b0 < RS_BINS: no overflow */
    unsigned last = (bu - 1) >> RS_SLI < RS_FL_COUNT - 1 ? (bu - 1) >> RS_SLI : RS_FL_COUNT - 1;
    for (unsigned fl = b1 >> RS_SLI; b1 < bu && fl <= last; fl++) {
        uint32_t w = x->map.sl[fl];
        if (fl == b1 >> RS_SLI) w &= ~0u << (b1 & (RS_SL_COUNT - 1));
        if (fl == (bu - 1) >> RS_SLI) w &= ~0u >> (RS_SL_COUNT - 1 - ((bu - 1) & (RS_SL_COUNT - 1)));
        const uint32_t *roots = &x->root[fl << RS_SLI];
        for (; w; w &= w - 1) {
            if ((nodes[roots[__builtin_ctz(w)]].aug & lmask) < lneed) continue;
            b = (fl << RS_SLI) + (unsigned)__builtin_ctz(w);
            uint32_t r = bf_find_in_bin(x, nodes, b, size, align, j);
            if (r != MP_NIL) return r;
        }
    }
    b = bu;
    return b < RS_BINS && rs_next_bin(&x->map, &b) ? x->first[b] : MP_NIL;
}

BF_INLINE uint32_t bf_find(void *st, uint64_t size, uint64_t align)
{
    const bf_index_t *x = cidx(st);
    const bf_node_t *nodes = cbnodes(st);
    if (align != 1) return bf_find_aligned(x, nodes, size, align);
    /* the own bin: its sizes straddle the request (an exact bin: all fit) */
    unsigned b0 = rs_bin_down(size), b;
    uint32_t r = x->root[b0];
    if (r != MP_NIL) {
        if (b0 < RS_EXACT) return x->first[b0];
        r = lower_bound(nodes, r, size);
        if (r != MP_NIL) return r;
    }
    b = b0 + 1; /* every range in a later bin fits: its leftmost is the best */
    return b < RS_BINS && rs_next_bin(&x->map, &b) ? x->first[b] : MP_NIL;
}

static uint64_t bf_largest(const void *st)
{
    const bf_index_t *x = cidx(st);
    const bf_node_t *nodes = cbnodes(st);
    unsigned b;
    if (!rs_last_bin(&x->map, &b)) return 0;
    uint32_t i = x->root[b];
    while (nodes[i].n.link[R] != MP_NIL) i = nodes[i].n.link[R];
    return nodes[i].n.size;
}

static void bf_clear(void *st)
{
    bf_index_t *x = idx(st);
    memset(&x->map, 0, sizeof x->map);
    memset(x->root, 0xff, sizeof x->root);
    memset(x->first, 0xff, sizeof x->first);
}

/* ---- check: robust against arbitrary bytes ------------------------------------ */
typedef struct bf_walk {
    const bf_node_t *nodes;
    uint32_t top;
    uint32_t nfree;
    unsigned bin;
    uint64_t count;
    const mp_rnode_t *prev; /* the previous node in order (B1) */
    uint32_t leftmost;      /* the first node visited in the bin */
    char *msg;
    size_t msglen;
} bf_walk_t;

/* Checks the subtree at i (a valid index below top, reached from `parent`) and
 * writes its height and augment.  Recursion depth <= BF_MAX_DEPTH, nodes visited
 * <= nfree + 1. */
static int bf_check_sub(bf_walk_t *w, uint32_t i, uint32_t parent, unsigned depth,
                        unsigned *out_height, uint64_t *out_aug)
{
    char *msg = w->msg;
    size_t msglen = w->msglen;
    const bf_node_t *x = &w->nodes[i];
    const mp_rnode_t *n = &x->n;
    if (depth > BF_MAX_DEPTH) MPI_FAIL("free tree deeper than %u at node %u", BF_MAX_DEPTH, i);
    if (++w->count > w->nfree) MPI_FAIL("free trees hold more nodes than the %u free ranges",
                                        w->nfree);
    if ((n->flags & ~BF_HMASK) != (RN_INUSE | RN_FREE))
        MPI_FAIL("free tree holds node %u with flags 0x%x, which is not a free range", i,
                 n->flags);
    if (n->link[P] != parent) MPI_FAIL("free tree node %u: parent link %u, expected %u", i,
                                       n->link[P], parent);
    uint32_t l = n->link[L], r = n->link[R];
    if (l != MP_NIL && l >= w->top) MPI_FAIL("free tree node %u links node %u beyond the watermark",
                                             i, l);
    if (r != MP_NIL && r >= w->top) MPI_FAIL("free tree node %u links node %u beyond the watermark",
                                             i, r);
    if (l != MP_NIL && l == r) MPI_FAIL("free tree node %u has node %u as both children", i, l);
    unsigned hl = 0, hr = 0;
    uint64_t al = 0, ar = 0;
    if (l != MP_NIL) {
        int rc = bf_check_sub(w, l, i, depth + 1, &hl, &al);
        if (rc) return rc;
    }
    /* in order: everything left of n is already visited */
    if (w->prev && !key_less(w->prev, n))
        MPI_FAIL("free tree out of order at node %u (size %llu, offset %llu)", i,
                 (unsigned long long)n->size, (unsigned long long)n->offset);
    if (!w->prev) w->leftmost = i;
    w->prev = n;
    if (rs_bin_down(n->size) != w->bin)
        MPI_FAIL("node %u of size %llu filed in bin %u", i, (unsigned long long)n->size, w->bin);
    if (r != MP_NIL) {
        int rc = bf_check_sub(w, r, i, depth + 1, &hr, &ar);
        if (rc) return rc;
    }
    unsigned h = 1 + (hl > hr ? hl : hr);
    if ((n->flags & BF_HMASK) >> BF_HSHIFT != h)
        MPI_FAIL("free tree node %u: stored height %u, actual %u", i,
                 (n->flags & BF_HMASK) >> BF_HSHIFT, h);
    if (hl > hr + 1 || hr > hl + 1)
        MPI_FAIL("free tree node %u is unbalanced: heights %u and %u", i, hl, hr);
    if (x->own != own_aug(n))
        MPI_FAIL("free tree node %u: own augment 0x%016llx, its range says 0x%016llx", i,
                 (unsigned long long)x->own, (unsigned long long)own_aug(n));
    uint64_t m = lanes_max(lanes_max(x->own, al), ar);
    if (x->aug != m)
        MPI_FAIL("free tree node %u: augment 0x%016llx, its subtree says 0x%016llx", i,
                 (unsigned long long)x->aug, (unsigned long long)m);
    *out_height = h;
    *out_aug = m;
    return MP_OK;
}

static int bf_fidx_check(const void *st, char *msg, size_t msglen)
{
    const bf_index_t *x = cidx(st);
    const mp_rset_t *rs = rs_cset(st);
    int rc = rs_binmap_check(&x->map, x->root, msg, msglen); /* B0 */
    if (rc) return rc;
    bf_walk_t w = {
        .nodes = cbnodes(st),
        .top = rs->top,
        .nfree = rs->nfree,
        .msg = msg,
        .msglen = msglen,
    };
    for (unsigned b = 0; b < RS_BINS; b++) {
        uint32_t root = x->root[b];
        if (root == MP_NIL) {
            if (x->first[b] != MP_NIL) MPI_FAIL("empty bin %u has a first node %u", b,
                                                x->first[b]);
            continue;
        }
        if (root >= rs->top) MPI_FAIL("bin %u: tree root %u beyond the watermark %u", b, root,
                                      rs->top);
        w.bin = b;
        w.prev = NULL;
        w.leftmost = MP_NIL;
        unsigned h;
        uint64_t aug;
        rc = bf_check_sub(&w, root, MP_NIL, 1, &h, &aug);
        if (rc) return rc;
        if (x->first[b] != w.leftmost) MPI_FAIL("bin %u: first node %u, its leftmost is %u", b,
                                                x->first[b], w.leftmost);
    }
    if (w.count != rs->nfree) MPI_FAIL("free trees hold %llu nodes for %u free ranges",
                                       (unsigned long long)w.count, rs->nfree);
    return MP_OK;
}

static const mp_fidx_t bestfit_fidx = {
    .area_size = BF_AREA,
    .node_size = sizeof(bf_node_t),
    .insert = bf_insert,
    .remove = bf_remove,
    .rekey = bf_rekey,
    .find = bf_find,
    .largest = bf_largest,
    .clear = bf_clear,
    .check = bf_fidx_check,
};

/* ---- the strategy ------------------------------------------------------------------ */
uint64_t mp_bestfit_state_size(uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_state_size(&bestfit_fidx, capacity, max_blocks);
}

int mp_bestfit_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return mpi_ranges_init(st, &bestfit_fidx, MP_KIND_BESTFIT, capacity, max_blocks);
}

BF_INLINE int bestfit_alloc_in(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    /* most requests are unaligned: a copy of the path with align folded to 1 */
    if (align == 1) return rs_alloc(st, &bestfit_fidx, size, 1, out);
    return rs_alloc(st, &bestfit_fidx, size, align, out);
}
BF_INLINE int bestfit_free_in(void *st, uint64_t offset)
{
    return rs_free(st, &bestfit_fidx, offset);
}
static int bestfit_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    return bestfit_alloc_in(st, size, align, out);
}
static int bestfit_free(void *st, uint64_t offset) { return bestfit_free_in(st, offset); }
static int bestfit_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align,
                           uint64_t *out)
{
    return mpi_ranges_realloc(st, &bestfit_fidx, offset, size, align, out);
}
RS_HANDLE_FORM(bestfit, &bestfit_fidx)
/* mp_ops_t.replay: the trace replay loop with alloc and free inlined, in the handle form
 * (replay_loop.h; debug builds' public table leaves it out, internal.h) */
MPI_REPLAY_LOOP(bestfit_replay, bestfit_alloc_h, bestfit_free_h, bestfit_realloc_h)
static int bestfit_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    return rs_size_of(st, &bestfit_fidx, offset, out);
}
static void bestfit_reset(void *st) { mpi_ranges_reset(st, &bestfit_fidx); }
static int bestfit_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    return mpi_ranges_check(st, len, &bestfit_fidx, MP_KIND_BESTFIT, msg, msglen);
}
static int bestfit_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    return mpi_ranges_walk(st, &bestfit_fidx, fn, ctx);
}

static uint64_t bestfit_hole(const void *st, uint64_t len, uint64_t *off)
{
    return mpi_ranges_hole(st, &bestfit_fidx, len, off);
}
static uint64_t bestfit_grow_size(const void *st) { return mpi_ranges_grow_size(st, &bestfit_fidx); }
static int bestfit_grow(const void *st, void *dst, uint64_t dst_len)
{
    return mpi_ranges_grow(st, &bestfit_fidx, dst, dst_len);
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
MPI_OPS_TABLE(bestfit,
    .name = "bestfit",
    .kind = MP_KIND_BESTFIT,
    .alloc = bestfit_alloc,
    .free = bestfit_free,
    .realloc = bestfit_realloc,
    .size_of = bestfit_size_of,
    .reset = bestfit_reset,
    .check = bestfit_check,
    .walk = bestfit_walk,
    .largest_free = bf_largest,
    .available = mpi_head_available,
    .free_ranges = mpi_ranges_free_ranges,
    .grow_size = bestfit_grow_size,
    .grow = bestfit_grow,
    .hole = bestfit_hole,
    .alloc_handle = bestfit_alloc_handle,
    .free_handle = bestfit_free_handle,
    .by_handle = bestfit_by_handle,
    .replay = bestfit_replay);
