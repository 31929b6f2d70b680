/*
 * bestfit.c -- exact best fit over offsets (exact sizes, O(log n)).
 *
 * Algorithm (orderly-allocator's ordered set by (size, offset); context-allocator's
 * binary-search-tree allocator), with the tree kept inside the state:
 *   - Free ranges are the nodes of one AVL tree ordered by the key (size, offset).
 *     Keys are unique (free ranges have distinct offsets).
 *   - alloc(size, align) takes the free range with the smallest size in which an
 *     aligned placement of `size` fits (pad = align_up(offset, align) - offset;
 *     it fits when range.size - pad >= size), the lowest offset among equal sizes:
 *     a lower-bound descent to (size, 0), then in-order successors until one fits.
 *     Every range of size >= size + align - 1 fits, so the walk only passes over
 *     ranges whose size is in [size, size + align - 1): O(log n) for align 1.
 *     This is an exact aligned fit, unlike orderly-allocator, which asks for
 *     size + align - 1 up front and so skips aligned exact fits.
 *   - largest_free is the rightmost node; free merges neighbours at once (ranges.h).
 *
 * Layout of the free index (after mp_head_t and mp_rset_t, see ranges.h):
 *
 *   +-----------+-----------+
 *   | root      | pad (0)   |     8 bytes
 *   | uint32_t  | uint32_t  |
 *   +-----------+-----------+
 *
 *   Each free node carries its tree links and height in the node array:
 *
 *     node.link[0] = left child   (MP_NIL when none)
 *     node.link[1] = right child  (MP_NIL when none)
 *     node.link[2] = parent       (MP_NIL for the root)
 *     node.flags   = RN_INUSE | RN_FREE | height << 8   (a leaf has height 1)
 *
 *                 root
 *                (s5,o9)
 *               /       \
 *          (s2,o4)     (s5,o40)        key = (size, offset)
 *          /     \
 *     (s1,o0)  (s2,o30)
 *
 * Invariants (bestfit_fidx_check, plus those of ranges.h):
 *  B1. In-order traversal visits keys (size, offset) strictly increasing.
 *  B2. Every child's parent link names the node that links to it; the root's
 *      parent is MP_NIL; a node's two children differ (unless both MP_NIL).
 *  B3. Stored height == 1 + max(height(left), height(right)), height(MP_NIL) == 0,
 *      and |height(left) - height(right)| <= 1 at every node.
 *  B4. Every tree node is below the watermark and is a free, in-use node whose
 *      flags hold no bits beyond RN_INUSE, RN_FREE and the height.
 *  B5. The tree holds exactly nfree nodes (so, with ranges.h, exactly the free ones).
 *  B6. The pad word is 0.
 * The height of an AVL tree of n < 2^32 nodes is below 47, so 8 bits hold it and
 * the check can bound its recursion at BF_MAX_DEPTH.
 */
#include "ranges.h"

typedef struct bf_index {
    uint32_t root;
    uint32_t pad;
} bf_index_t;

#define BF_AREA ((sizeof(bf_index_t) + 7) & ~(size_t)7)
#define BF_HSHIFT 8
#define BF_HMASK (0xffu << BF_HSHIFT)
#define BF_MAX_DEPTH 64 /* > the height of any AVL tree of fewer than 2^32 nodes */

enum { L = 0, R = 1, P = 2 };

static const mp_fidx_t bestfit_fidx;

static inline bf_index_t *idx(void *st) { return (bf_index_t *)rs_area(st); }
static inline const bf_index_t *cidx(const void *st) { return (const bf_index_t *)rs_carea(st); }

static inline unsigned height(const mp_rnode_t *nodes, uint32_t i)
{
    return i == MP_NIL ? 0 : (nodes[i].flags & BF_HMASK) >> BF_HSHIFT;
}

static inline void set_height(mp_rnode_t *n, unsigned h)
{
    n->flags = (n->flags & ~BF_HMASK) | ((uint32_t)h << BF_HSHIFT);
}

static inline void update_height(mp_rnode_t *nodes, uint32_t i)
{
    unsigned hl = height(nodes, nodes[i].link[L]), hr = height(nodes, nodes[i].link[R]);
    set_height(&nodes[i], 1 + (hl > hr ? hl : hr));
}

/* (a.size, a.offset) < (b.size, b.offset) */
static inline int key_less(const mp_rnode_t *a, const mp_rnode_t *b)
{
    return a->size < b->size || (a->size == b->size && a->offset < b->offset);
}

/* Make `to` the child of `parent` where `from` was (or the root). */
static inline void replace_child(bf_index_t *x, mp_rnode_t *nodes, uint32_t parent, uint32_t from,
                                 uint32_t to)
{
    if (parent == MP_NIL) x->root = to;
    else if (nodes[parent].link[L] == from) nodes[parent].link[L] = to;
    else nodes[parent].link[R] = to;
    if (to != MP_NIL) nodes[to].link[P] = parent;
}

/* Lift the child of n on side d into n's place; returns the new subtree root. */
static uint32_t rotate(bf_index_t *x, mp_rnode_t *nodes, uint32_t n, int d)
{
    uint32_t c = nodes[n].link[d];
    uint32_t inner = nodes[c].link[!d];
    uint32_t p = nodes[n].link[P];
    nodes[n].link[d] = inner;
    if (inner != MP_NIL) nodes[inner].link[P] = n;
    nodes[c].link[!d] = n;
    nodes[n].link[P] = c;
    replace_child(x, nodes, p, n, c);
    update_height(nodes, n);
    update_height(nodes, c);
    return c;
}

/* Restore heights and balance from n up to the root; stops early once a subtree
 * comes out as high as it was (nothing above it can change then). */
static void rebalance(bf_index_t *x, mp_rnode_t *nodes, uint32_t n)
{
    while (n != MP_NIL) {
        unsigned old = height(nodes, n);
        unsigned hl = height(nodes, nodes[n].link[L]), hr = height(nodes, nodes[n].link[R]);
        if (hl > hr + 1 || hr > hl + 1) {
            int d = hl > hr ? L : R; /* the heavy side */
            uint32_t c = nodes[n].link[d];
            if (height(nodes, nodes[c].link[!d]) > height(nodes, nodes[c].link[d]))
                rotate(x, nodes, c, !d); /* double rotation: straighten the zig-zag */
            n = rotate(x, nodes, n, d);
        } else {
            set_height(&nodes[n], 1 + (hl > hr ? hl : hr));
        }
        if (height(nodes, n) == old) return;
        n = nodes[n].link[P];
    }
}

static void bf_insert(void *st, uint32_t i)
{
    bf_index_t *x = idx(st);
    mp_rnode_t *nodes = rs_nodes(st, &bestfit_fidx);
    uint32_t p = MP_NIL, c = x->root;
    int d = L;
    while (c != MP_NIL) {
        p = c;
        d = key_less(&nodes[i], &nodes[c]) ? L : R;
        c = nodes[c].link[d];
    }
    nodes[i].link[L] = nodes[i].link[R] = MP_NIL;
    nodes[i].link[P] = p;
    set_height(&nodes[i], 1);
    if (p == MP_NIL) {
        x->root = i;
        return;
    }
    nodes[p].link[d] = i;
    rebalance(x, nodes, p);
}

static void bf_remove(void *st, uint32_t i)
{
    bf_index_t *x = idx(st);
    mp_rnode_t *nodes = rs_nodes(st, &bestfit_fidx);
    uint32_t l = nodes[i].link[L], r = nodes[i].link[R], p = nodes[i].link[P];
    uint32_t start;
    if (l == MP_NIL || r == MP_NIL) {
        replace_child(x, nodes, p, i, l != MP_NIL ? l : r);
        start = p;
    } else {
        /* Two children: the in-order successor s takes i's place in the tree.  The
         * nodes are relinked, not their keys copied: indices name ranges elsewhere. */
        uint32_t s = r;
        while (nodes[s].link[L] != MP_NIL) s = nodes[s].link[L];
        if (s == r) {
            start = s; /* s keeps its right subtree */
        } else {
            uint32_t sp = nodes[s].link[P], sr = nodes[s].link[R];
            nodes[sp].link[L] = sr;
            if (sr != MP_NIL) nodes[sr].link[P] = sp;
            nodes[s].link[R] = r;
            nodes[r].link[P] = s;
            start = sp;
        }
        nodes[s].link[L] = l;
        nodes[l].link[P] = s;
        replace_child(x, nodes, p, i, s);
        set_height(&nodes[s], height(nodes, i)); /* the height its position had */
    }
    nodes[i].link[L] = nodes[i].link[R] = nodes[i].link[P] = MP_NIL;
    set_height(&nodes[i], 0);
    rebalance(x, nodes, start);
}

/* A free range's key changed in place (the node is still linked where its old key
 * belonged): re-file it.  bf_remove relinks by structure, not by key, so it works on
 * the changed node. */
static void bf_rekey(void *st, uint32_t i, uint64_t old_size)
{
    (void)old_size;
    bf_remove(st, i);
    bf_insert(st, i);
}

static inline int fits(const mp_rnode_t *n, uint64_t size, uint64_t align)
{
    uint64_t pad = (0 - n->offset) & (align - 1); /* align_up(offset) - offset */
    return n->size >= pad && n->size - pad >= size;
}

static inline uint32_t successor(const mp_rnode_t *nodes, uint32_t i)
{
    uint32_t c = nodes[i].link[R];
    if (c != MP_NIL) {
        while (nodes[c].link[L] != MP_NIL) c = nodes[c].link[L];
        return c;
    }
    uint32_t p = nodes[i].link[P];
    while (p != MP_NIL && nodes[p].link[R] == i) {
        i = p;
        p = nodes[p].link[P];
    }
    return p;
}

static uint32_t bf_find(void *st, uint64_t size, uint64_t align)
{
    const bf_index_t *x = cidx(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &bestfit_fidx);
    /* lower bound of (size, 0): the first node whose size is >= size */
    uint32_t best = MP_NIL;
    for (uint32_t c = x->root; c != MP_NIL;) {
        if (nodes[c].size >= size) {
            best = c;
            c = nodes[c].link[L];
        } else {
            c = nodes[c].link[R];
        }
    }
    /* in key order until one fits; ends by size + align - 1 at the latest */
    for (uint32_t i = best; i != MP_NIL; i = successor(nodes, i))
        if (fits(&nodes[i], size, align)) return i;
    return MP_NIL;
}

static uint64_t bf_largest(const void *st)
{
    const bf_index_t *x = cidx(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &bestfit_fidx);
    uint32_t i = x->root;
    if (i == MP_NIL) return 0;
    while (nodes[i].link[R] != MP_NIL) i = nodes[i].link[R];
    return nodes[i].size;
}

static void bf_clear(void *st)
{
    bf_index_t *x = idx(st);
    x->root = MP_NIL;
    x->pad = 0;
}

/* ---- check: robust against arbitrary bytes ------------------------------------ */
typedef struct bf_walk {
    const mp_rnode_t *nodes;
    uint32_t top;
    uint32_t nfree;
    uint64_t count;
    const mp_rnode_t *prev; /* the previous node in order (B1) */
    char *msg;
    size_t msglen;
} bf_walk_t;

/* Checks the subtree at i (a valid index below top, reached from `parent`) and
 * writes its height.  Recursion depth <= BF_MAX_DEPTH, nodes visited <= nfree + 1. */
static int bf_check_sub(bf_walk_t *w, uint32_t i, uint32_t parent, unsigned depth,
                        unsigned *out_height)
{
    char *msg = w->msg;
    size_t msglen = w->msglen;
    const mp_rnode_t *n = &w->nodes[i];
    if (depth > BF_MAX_DEPTH) RS_FAIL("free tree deeper than %u at node %u", BF_MAX_DEPTH, i);
    if (++w->count > w->nfree) RS_FAIL("free tree holds more nodes than the %u free ranges",
                                       w->nfree);
    if ((n->flags & ~BF_HMASK) != (RN_INUSE | RN_FREE))
        RS_FAIL("free tree holds node %u with flags 0x%x, which is not a free range", i,
                n->flags);
    if (n->link[P] != parent) RS_FAIL("free tree node %u: parent link %u, expected %u", i,
                                      n->link[P], parent);
    uint32_t l = n->link[L], r = n->link[R];
    if (l != MP_NIL && l >= w->top) RS_FAIL("free tree node %u links node %u beyond the watermark",
                                            i, l);
    if (r != MP_NIL && r >= w->top) RS_FAIL("free tree node %u links node %u beyond the watermark",
                                            i, r);
    if (l != MP_NIL && l == r) RS_FAIL("free tree node %u has node %u as both children", i, l);
    unsigned hl = 0, hr = 0;
    if (l != MP_NIL) {
        int rc = bf_check_sub(w, l, i, depth + 1, &hl);
        if (rc) return rc;
    }
    /* in order: everything left of n is already visited */
    if (w->prev && !key_less(w->prev, n))
        RS_FAIL("free tree out of order at node %u (size %llu, offset %llu)", i,
                (unsigned long long)n->size, (unsigned long long)n->offset);
    w->prev = n;
    if (r != MP_NIL) {
        int rc = bf_check_sub(w, r, i, depth + 1, &hr);
        if (rc) return rc;
    }
    unsigned h = 1 + (hl > hr ? hl : hr);
    if ((n->flags & BF_HMASK) >> BF_HSHIFT != h)
        RS_FAIL("free tree node %u: stored height %u, actual %u", i,
                (n->flags & BF_HMASK) >> BF_HSHIFT, h);
    if (hl > hr + 1 || hr > hl + 1)
        RS_FAIL("free tree node %u is unbalanced: heights %u and %u", i, hl, hr);
    *out_height = h;
    return MP_OK;
}

static int bf_fidx_check(const void *st, char *msg, size_t msglen)
{
    const bf_index_t *x = cidx(st);
    const mp_rset_t *rs = rs_cset(st);
    bf_walk_t w = {
        .nodes = rs_cnodes(st, &bestfit_fidx),
        .top = rs->top,
        .nfree = rs->nfree,
        .count = 0,
        .prev = NULL,
        .msg = msg,
        .msglen = msglen,
    };
    if (x->pad != 0) RS_FAIL("free tree pad word is 0x%x, not 0", x->pad);
    if (x->root != MP_NIL) {
        if (x->root >= rs->top) RS_FAIL("free tree root %u beyond the watermark %u", x->root,
                                        rs->top);
        unsigned h;
        int rc = bf_check_sub(&w, x->root, MP_NIL, 1, &h);
        if (rc) return rc;
    }
    if (w.count != rs->nfree) RS_FAIL("free tree holds %llu nodes for %u free ranges",
                                      (unsigned long long)w.count, rs->nfree);
    return MP_OK;
}

static const mp_fidx_t bestfit_fidx = {
    .area_size = BF_AREA,
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
    return rs_state_size(&bestfit_fidx, capacity, max_blocks);
}

int mp_bestfit_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    return rs_init(st, &bestfit_fidx, MP_KIND_BESTFIT, capacity, max_blocks);
}

static int bestfit_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    return rs_alloc(st, &bestfit_fidx, size, align, out);
}
static int bestfit_free(void *st, uint64_t offset) { return rs_free(st, &bestfit_fidx, offset); }
static int bestfit_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align,
                           uint64_t *out)
{
    return rs_realloc(st, &bestfit_fidx, offset, size, align, out);
}
static int bestfit_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    return rs_size_of(st, &bestfit_fidx, offset, out);
}
static void bestfit_reset(void *st) { rs_reset(st, &bestfit_fidx); }
static int bestfit_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    return rs_check(st, len, &bestfit_fidx, MP_KIND_BESTFIT, msg, msglen);
}
static int bestfit_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    return rs_walk(st, &bestfit_fidx, fn, ctx);
}
static uint64_t bestfit_available(const void *st)
{
    const mp_head_t *h = st;
    return h->capacity - h->used;
}
static uint64_t bestfit_free_ranges(const void *st) { return rs_cset(st)->nfree; }

const mp_ops_t mp_bestfit_ops = {
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
    .available = bestfit_available,
    .free_ranges = bestfit_free_ranges,
};
