/*
 * ranges.h -- the range engine shared by the exact strategies (TLSF, BestFit).
 *
 * A span [0, capacity) is cut into ranges, each described by one node of a fixed
 * node array.  The nodes form the *physical list* (prev/next by address) that
 * covers the span without gaps.  Free ranges are also filed in a *free index*
 * that each strategy supplies (TLSF: a list per size bin; BestFit: an AVL tree
 * keyed by (size, offset) per size bin; the bins: ranges_bins.h).  Allocated ranges
 * are found by offset through an
 * open-addressing hash table (linear probing, backward-shift deletion) whose slots
 * hold {tag, node}: tag = (uint32_t)(offset >> 3), so probing compares tags in the
 * table without touching nodes; the home slot is a multiplicative hash of the tag.
 * In front of it sits the nursery, a small direct-mapped table of the same slots:
 * a new allocation is filed in its nursery slot, and the slot's previous occupant
 * moves on to the table.  Most ranges are freed soon after they were handed out, and
 * then never touch the table, which is sized for max_blocks and so out of cache
 * (python3-compileall: 1 table access per op before, ~0.3 after).  mp_rset_t keeps
 * the byte offsets of both (derived, and checked before any table is followed).
 *
 * State layout (all integers, no pointers; see mempool.h principle 1):
 *
 *   +-----------+-----------+--------------+-------------------+--------------+-------------+
 *   | mp_head_t | mp_rset_t | free index   | nodes[max_blocks] | mp_slot_t    | mp_slot_t   |
 *   | (counters)| (tables)  | (area_size B)| (node_size B each)| table[2^bits]| nursery[2^n]|
 *   +-----------+-----------+--------------+-------------------+--------------+-------------+
 *   n = rs_nursery_bits(bits) = min(bits - 1, RS_NURSERY_BITS).
 *   A node starts with mp_rnode_t; a strategy may extend it (fi->node_size).
 *
 * Node life: unused (never touched: index >= top; or returned: on the spare stack,
 * linked through .next) -> in the physical list, free (in the free index) or
 * allocated (in the nursery or the hash table).  Only what a node's state uses is
 * kept: a spare node's prev and links, an allocated node's links are stale.
 *
 * Invariants (checked by mpi_ranges_check, ranges_check.c):
 *  1. The physical list starts at `first`, visits each in-use node once, and its
 *     ranges are contiguous: node.offset == prev.offset + prev.size, the first at
 *     0, the last ends at capacity; every size >= 1; prev links mirror next links.
 *  2. No two physically adjacent ranges are both free (merged on free).
 *  3. nfree == number of free ranges; head.live == number of allocated ranges;
 *     head.used == head.requested == sum of allocated sizes.
 *  4. The nursery and the hash table together hold exactly the allocated nodes
 *     not marked RN_HANDLE, each once: in the nursery at its own slot (rs_nhome), or
 *     in the table reachable from its home slot without crossing an empty slot.  An
 *     allocated node's flags are RN_INUSE, or RN_INUSE | RN_HANDLE.
 *  5. Spare stack + in-use nodes == top; every spare node is marked unused.
 *  6. The free index holds exactly the free nodes (checked by the strategy).
 *  7. mp_rset_t's derived fields (hash_bits, nursery_bits, table_off, nursery_off)
 *     are what the parameters give.
 *
 * Free ranges change in place where they can: alloc carves the request out of a
 * free node and that node keeps the larger remainder; free lets a free neighbour
 * absorb the freed range (both free: the larger absorbs both).  The index is then
 * told with rekey(), which for most changes of a large range has nothing to do
 * (TLSF: the bin did not change; BestFit: the key stays between its neighbours),
 * instead of a remove + insert pair that touches the neighbours in the index.
 * Choices that depend on the data (is there a neighbour, is it free, which one is
 * larger) are made with selects (rs_sel32), not branches, where a mispredicted
 * branch costs more than the work it would skip (measured, see the git log).
 *
 * The handle form (mp_ops_t.alloc_handle / free_handle; OffsetAllocator frees this
 * way).  rs_alloc_handle places exactly as rs_alloc does, but the allocated node is
 * marked RN_HANDLE and not filed by offset: the caller keeps the node and the offset,
 * and rs_free_handle finds the range from them with no lookup (the lookup on free is
 * the table's cache misses on large traces).  It frees only a node below top,
 * allocated by handle, at exactly that offset; the offset calls (free, size_of,
 * realloc) do not see such a range.  The replay loops (replay_loop.h) run in this form
 * with the node alone (rs_free_node: their own ranges, not checked).
 *
 * The hot engine functions (alloc, free, size_of and what they use) are `static
 * inline`, forced, and take the strategy's free-index table as a constant, so each
 * strategy file gets its own specialised copy with the index operations folded in.
 * The cold ones (state_size, init, reset, realloc, walk) are compiled once, in
 * ranges.c, and reach the index through the table's function pointers; check() is
 * in ranges_check.c.  Each strategy file also instantiates the trace replay loop with
 * its alloc and free inlined (replay_loop.h, mp_ops_t.replay).
 */
#ifndef MEMPOOL_RANGES_H
#define MEMPOOL_RANGES_H

#include <stdio.h>
#include <string.h>

#include "internal.h"

/* The hot paths are forced inline: each strategy file then gets one straight-line
 * copy of alloc and free with its free index folded in (no calls, no spills). */
#define RS_HOT static inline __attribute__((always_inline))

/* c ? a : b without a branch (for data-dependent choices a predictor cannot learn;
 * compilers turn ?: on such values into branches more often than not). */
RS_HOT uint32_t rs_sel32(int c, uint32_t a, uint32_t b)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __asm__("test %1, %1\n\tcmovne %2, %0" : "+r"(b) : "r"(c), "r"(a) : "cc");
    return b;
#else
    uint32_t m = 0u - (uint32_t)(c != 0);
    return (a & m) | (b & ~m);
#endif
}

#define RN_INUSE 1u /* node belongs to the physical list                */
#define RN_FREE 2u  /* the range is free (filed in the free index)      */
#define RN_HANDLE 4u /* allocated by handle: not in the offset table (see below) */
/* bits 8..31 of flags: scratch for the free index (TLSF: the bin; AVL: the height) */

typedef struct mp_rnode {
    uint64_t offset;  /* start of the range                              */
    uint64_t size;    /* bytes, >= 1                                     */
    uint32_t prev;    /* physical predecessor, MP_NIL for the first      */
    uint32_t next;    /* physical successor, MP_NIL for the last; spare stack link */
    uint32_t link[3]; /* free-index links (TLSF: prev/next in bin; AVL: left/right/parent) */
    uint32_t flags;   /* RN_INUSE | RN_FREE | index scratch << 8         */
} mp_rnode_t;

typedef struct mp_rset {
    uint32_t max_blocks; /* nodes in the node array (== head.param[0])     */
    uint32_t top;        /* nodes [0, top) have been handed out once       */
    uint32_t spare;      /* stack of returned nodes, MP_NIL when empty     */
    uint32_t nspare;     /* nodes on the spare stack                       */
    uint32_t nfree;      /* free ranges                                    */
    uint32_t first;      /* node at offset 0                               */
    uint32_t hash_bits;  /* table has 1 << hash_bits slots                 */
    uint32_t nursery_bits; /* nursery has 1 << nursery_bits slots (derived)  */
    uint64_t table_off;  /* byte offset of the table in the state (derived) */
    uint64_t nursery_off; /* byte offset of the nursery (derived)           */
} mp_rset_t;

/* A slot of the offset table; node == MP_NIL marks it empty. */
typedef struct mp_slot {
    uint32_t tag;  /* (uint32_t)(offset >> 3) of the node's range */
    uint32_t node; /* allocated node, or MP_NIL                   */
} mp_slot_t;

/* The free index a strategy plugs into the engine. */
typedef struct mp_fidx {
    uint64_t area_size; /* bytes of the index area after mp_rset_t (multiple of 8) */
    uint64_t node_size; /* bytes per node: sizeof(mp_rnode_t) or more, a multiple of 8;
                         * a strategy may extend its nodes (BestFit: subtree augments) */
    void (*insert)(void *st, uint32_t i);
    void (*remove)(void *st, uint32_t i);
    /* free node i, still filed, had its offset and/or size changed in place (its
     * size was old_size): re-file it where its new key belongs.  Cheaper than
     * remove + insert when the key still maps to the same place. */
    void (*rekey)(void *st, uint32_t i, uint64_t old_size);
    /* a free node in which an aligned placement of `size` fits, or MP_NIL */
    uint32_t (*find)(void *st, uint64_t size, uint64_t align);
    uint64_t (*largest)(const void *st);
    void (*clear)(void *st);
    /* verify the index holds exactly the nfree free nodes; write msg, return MP_ECORRUPT */
    int (*check)(const void *st, char *msg, size_t msglen);
} mp_fidx_t;

#define RS_HEAD_BYTES ((uint64_t)sizeof(mp_head_t))
#define RS_AREA_OFF (RS_HEAD_BYTES + (uint64_t)sizeof(mp_rset_t))

static inline mp_head_t *rs_head(void *st) { return (mp_head_t *)st; }
static inline mp_rset_t *rs_set(void *st) { return (mp_rset_t *)((char *)st + RS_HEAD_BYTES); }
static inline const mp_rset_t *rs_cset(const void *st)
{
    return (const mp_rset_t *)((const char *)st + RS_HEAD_BYTES);
}
static inline void *rs_area(void *st) { return (char *)st + RS_AREA_OFF; }
static inline const void *rs_carea(const void *st) { return (const char *)st + RS_AREA_OFF; }
static inline mp_rnode_t *rs_nodes(void *st, const mp_fidx_t *fi)
{
    return (mp_rnode_t *)((char *)st + RS_AREA_OFF + fi->area_size);
}
static inline const mp_rnode_t *rs_cnodes(const void *st, const mp_fidx_t *fi)
{
    return (const mp_rnode_t *)((const char *)st + RS_AREA_OFF + fi->area_size);
}
/* Node i of the node array `nodes`: nodes are fi->node_size bytes apart (a constant
 * where fi is the strategy's own table, so this folds into an index). */
RS_HOT mp_rnode_t *rs_node(const mp_fidx_t *fi, mp_rnode_t *nodes, uint32_t i)
{
    return (mp_rnode_t *)((char *)nodes + (uint64_t)i * fi->node_size);
}
RS_HOT const mp_rnode_t *rs_cnode(const mp_fidx_t *fi, const mp_rnode_t *nodes, uint32_t i)
{
    return (const mp_rnode_t *)((const char *)nodes + (uint64_t)i * fi->node_size);
}
/* The table and the nursery are found through offsets kept in mp_rset_t (derived
 * from the parameters, and checked against them before any table is followed). */
static inline mp_slot_t *rs_table(void *st, const mp_fidx_t *fi)
{
    (void)fi;
    return (mp_slot_t *)((char *)st + rs_set(st)->table_off);
}
static inline const mp_slot_t *rs_ctable(const void *st, const mp_fidx_t *fi)
{
    (void)fi;
    return (const mp_slot_t *)((const char *)st + rs_cset(st)->table_off);
}
static inline uint64_t rs_table_off(const mp_fidx_t *fi, uint64_t max_blocks)
{
    return RS_AREA_OFF + fi->area_size + max_blocks * fi->node_size;
}

/* Table slots: the power of two >= 1.5 * max_blocks, so even with every node
 * allocated the load stays <= 2/3 (linear probing degrades only past that), and a
 * table for a large pool is half the size it would be at a load of 1/2 (python3-
 * compileall: 4 MB instead of 8 MB, 10% faster). */
static inline uint32_t rs_hash_bits(uint64_t max_blocks)
{
    uint32_t bits = 4;
    while (((uint64_t)1 << bits) < max_blocks + max_blocks / 2) bits++;
    return bits;
}

/* The nursery: half the table's slots, at most 2^RS_NURSERY_BITS (see below). */
#ifndef RS_NURSERY_BITS
#define RS_NURSERY_BITS 15
#endif
static inline uint32_t rs_nursery_bits(uint32_t hash_bits)
{
    return hash_bits - 1 < RS_NURSERY_BITS ? hash_bits - 1 : RS_NURSERY_BITS;
}

static inline mp_slot_t *rs_nursery(void *st, const mp_fidx_t *fi)
{
    (void)fi;
    return (mp_slot_t *)((char *)st + rs_set(st)->nursery_off);
}
static inline const mp_slot_t *rs_cnursery(const void *st, const mp_fidx_t *fi)
{
    (void)fi;
    return (const mp_slot_t *)((const char *)st + rs_cset(st)->nursery_off);
}



RS_HOT uint32_t rs_tag(uint64_t offset) { return (uint32_t)(offset >> 3); }
/* Fibonacci hashing of the tag.  Not (tag ^ tag >> bits): that keeps sequential
 * ranges in one contiguous run of slots (and < 8-byte ranges on one home), so every
 * lookup and every backward-shift deletion walked the whole run: O(n) per op. */
RS_HOT uint64_t rs_home(uint32_t tag, uint32_t bits)
{
    return ((uint64_t)tag * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}
/* The nursery slot of a tag (another multiplier: independent of the table home). */
RS_HOT uint64_t rs_nhome(uint32_t tag, uint32_t nbits)
{
    return ((uint64_t)tag * 0xC2B2AE3D27D4EB4Full) >> (64 - nbits);
}

/* ---- node pool ----------------------------------------------------------- */
RS_HOT uint32_t rs_spare_count(const mp_rset_t *rs)
{
    return rs->max_blocks - rs->top + rs->nspare;
}

RS_HOT uint32_t rs_node_new(void *st, const mp_fidx_t *fi)
{
    mp_rset_t *rs = rs_set(st);
    mp_rnode_t *nodes = rs_nodes(st, fi);
    uint32_t i;
    mpi_assert(rs->spare != MP_NIL || rs->top < rs->max_blocks); /* callers count spares */
    if (rs->spare != MP_NIL) {
        i = rs->spare;
        rs->spare = rs_node(fi, nodes, i)->next;
        rs->nspare--;
    } else { /* first use: zeroed, so that what a state holds follows from its calls */
        i = rs->top++;
        memset(rs_node(fi, nodes, i), 0, fi->node_size);
    }
    rs_node(fi, nodes, i)->flags = RN_INUSE; /* links: written when it is filed as free */
    return i;
}

RS_HOT void rs_node_release(void *st, const mp_fidx_t *fi, uint32_t i)
{
    mp_rset_t *rs = rs_set(st);
    mp_rnode_t *n = rs_node(fi, rs_nodes(st, fi), i);
    n->flags = 0;
    n->next = rs->spare;
    rs->spare = i;
    rs->nspare++;
}

/* ---- offset -> allocated node: nursery + hash table ---------------------- */
/* Where an allocated node is filed: RS_LOC_TABLE(s) >= 0, a table slot; a nursery
 * slot n as RS_LOC_NURSERY(n) <= -2; RS_NOT_FOUND. */
#define RS_NOT_FOUND ((int64_t)-1)
#define RS_LOC_NURSERY(n) (-2 - (int64_t)(n))

/* The table slot of (tag, node) when offset matches, probing from its home.
 * Bounded: even a corrupted table cannot make it loop (see rs_check). */
RS_HOT int64_t rs_table_find(const void *st, const mp_fidx_t *fi, uint32_t tag, uint64_t offset)
{
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, fi);
    const mp_slot_t *t = rs_ctable(st, fi);
    uint64_t mask = ((uint64_t)1 << rs->hash_bits) - 1;
    uint64_t s = rs_home(tag, rs->hash_bits);
    for (uint64_t probes = 0; probes <= mask; probes++) {
        uint32_t i = t[s].node;
        if (i == MP_NIL) return RS_NOT_FOUND;
        if (t[s].tag == tag && rs_cnode(fi, nodes, i)->offset == offset) return (int64_t)s;
        s = (s + 1) & mask;
    }
    return RS_NOT_FOUND;
}

/* Where the allocated node starting at offset is filed (its nursery slot first),
 * and the node in *node (when found). */
RS_HOT int64_t rs_find_node(const void *st, const mp_fidx_t *fi, uint64_t offset, uint32_t *node)
{
    const mp_rset_t *rs = rs_cset(st);
    uint32_t tag = rs_tag(offset);
    uint64_t n = rs_nhome(tag, rs->nursery_bits);
    mp_slot_t e = rs_cnursery(st, fi)[n];
    if (e.node != MP_NIL && e.tag == tag &&
        rs_cnode(fi, rs_cnodes(st, fi), e.node)->offset == offset) {
        *node = e.node;
        return RS_LOC_NURSERY(n);
    }
    int64_t s = rs_table_find(st, fi, tag, offset);
    if (s >= 0) *node = rs_ctable(st, fi)[s].node;
    return s;
}

RS_HOT int64_t rs_find(const void *st, const mp_fidx_t *fi, uint64_t offset)
{
    uint32_t node;
    return rs_find_node(st, fi, offset, &node);
}

RS_HOT uint32_t rs_loc_node(const void *st, const mp_fidx_t *fi, int64_t loc)
{
    return loc >= 0 ? rs_ctable(st, fi)[loc].node : rs_cnursery(st, fi)[-2 - loc].node;
}

RS_HOT uint32_t rs_lookup(const void *st, const mp_fidx_t *fi, uint64_t offset)
{
    int64_t loc = rs_find(st, fi, offset);
    return loc == RS_NOT_FOUND ? MP_NIL : rs_loc_node(st, fi, loc);
}

RS_HOT void rs_table_insert(void *st, const mp_fidx_t *fi, uint32_t tag, uint32_t i)
{
    mp_rset_t *rs = rs_set(st);
    mp_slot_t *t = rs_table(st, fi);
    uint64_t mask = ((uint64_t)1 << rs->hash_bits) - 1;
    uint64_t s = rs_home(tag, rs->hash_bits);
    while (t[s].node != MP_NIL) s = (s + 1) & mask;
    t[s].tag = tag;
    t[s].node = i;
}

/* File allocated node i: in its nursery slot, whose previous occupant moves on to
 * the table.  A range freed soon after it was handed out (most are) never touches
 * the table, which is large and so out of cache. */
RS_HOT void rs_hash_insert(void *st, const mp_fidx_t *fi, uint32_t i)
{
    uint32_t tag = rs_tag(rs_node(fi, rs_nodes(st, fi), i)->offset);
    mp_slot_t *e = &rs_nursery(st, fi)[rs_nhome(tag, rs_set(st)->nursery_bits)];
    if (e->node != MP_NIL) rs_table_insert(st, fi, e->tag, e->node);
    e->tag = tag;
    e->node = i;
}

/* Empty table slot s; backward-shift deletion keeps every probe chain unbroken. */
RS_HOT void rs_table_remove(void *st, const mp_fidx_t *fi, uint64_t s)
{
    mp_rset_t *rs = rs_set(st);
    mp_slot_t *t = rs_table(st, fi);
    uint32_t bits = rs->hash_bits;
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    uint64_t hole = s;
    for (;;) {
        s = (s + 1) & mask;
        if (t[s].node == MP_NIL) break;
        uint64_t home = rs_home(t[s].tag, bits);
        /* move the entry into the hole when its home is not in (hole, s] cyclically */
        if (((s - home) & mask) >= ((s - hole) & mask)) {
            t[hole] = t[s];
            hole = s;
        }
    }
    t[hole].node = MP_NIL;
    t[hole].tag = 0;
}

/* Unfile the node at loc (from rs_find). */
RS_HOT void rs_loc_remove(void *st, const mp_fidx_t *fi, int64_t loc)
{
    if (loc >= 0) {
        rs_table_remove(st, fi, (uint64_t)loc);
    } else {
        mp_slot_t *e = &rs_nursery(st, fi)[-2 - loc];
        e->node = MP_NIL;
        e->tag = 0;
    }
}

/* ---- carving and merging ------------------------------------------------- */
RS_HOT uint64_t rs_align_up(uint64_t x, uint64_t align)
{
    return (x + align - 1) & ~(align - 1);
}

/* Nodes needed to carve [at, at+size) out of free node i. */
RS_HOT uint32_t rs_carve_cost(const mp_rnode_t *n, uint64_t at, uint64_t size)
{
    return (at > n->offset) + (at + size < n->offset + n->size);
}

/* Link node n into the physical list just before node i / just after node i. */
RS_HOT void rs_link_before(const mp_fidx_t *fi, mp_rset_t *rs, mp_rnode_t *nodes, uint32_t n,
                           uint32_t i)
{
    mp_rnode_t *N = rs_node(fi, nodes, n), *I = rs_node(fi, nodes, i);
    uint32_t p = I->prev;
    N->prev = p;
    N->next = i;
    I->prev = n;
    if (p != MP_NIL) rs_node(fi, nodes, p)->next = n;
    else rs->first = n;
}

RS_HOT void rs_link_after(const mp_fidx_t *fi, mp_rnode_t *nodes, uint32_t n, uint32_t i)
{
    mp_rnode_t *N = rs_node(fi, nodes, n), *I = rs_node(fi, nodes, i);
    uint32_t q = I->next;
    N->prev = i;
    N->next = q;
    I->next = n;
    if (q != MP_NIL) rs_node(fi, nodes, q)->prev = n;
}

/* A new node for the free range [offset, offset + size), linked into the physical list
 * next to node `at` (RS_BEFORE or RS_AFTER it), counted and filed in the free index:
 * the one way a free range is made.  The caller made sure that a node is spare. */
enum { RS_AFTER = 0, RS_BEFORE = 1 };
RS_HOT uint32_t rs_new_free(void *st, const mp_fidx_t *fi, mp_rset_t *rs, mp_rnode_t *nodes,
                            uint64_t offset, uint64_t size, uint32_t at, int before)
{
    uint32_t t = rs_node_new(st, fi);
    mp_rnode_t *n = rs_node(fi, nodes, t);
    n->offset = offset;
    n->size = size;
    if (before) rs_link_before(fi, rs, nodes, t, at);
    else rs_link_after(fi, nodes, t, at);
    n->flags = RN_INUSE | RN_FREE;
    rs->nfree++;
    fi->insert(st, t);
    return t;
}

/* Turn [at, at+size) of free node i (filed in the free index) into an allocated
 * range; the gap in front and the tail stay free.  The larger of the two remainders
 * keeps node i, re-keyed in place (usually no index work: a big range that loses a
 * little stays where it is filed); the allocated range and the smaller remainder
 * get new nodes.  The caller made sure that enough nodes are spare (rs_carve_cost).
 * Returns the allocated node. */
RS_HOT uint32_t rs_carve_as(void *st, const mp_fidx_t *fi, uint32_t i, uint64_t at, uint64_t size,
                            int by_handle)
{
    mp_rset_t *rs = rs_set(st);
    mp_rnode_t *nodes = rs_nodes(st, fi), *I = rs_node(fi, nodes, i);
    uint64_t o = I->offset, s = I->size;
    mpi_assert((I->flags & (RN_INUSE | RN_FREE)) == (RN_INUSE | RN_FREE));
    mpi_assert(size >= 1 && at >= o && at + size <= o + s); /* fi->find's promise */
    uint64_t gap = at - o, tail = o + s - (at + size);
    uint32_t a;
    if (gap == 0 && tail == 0) { /* exact fit: node i itself becomes allocated */
        fi->remove(st, i);
        rs->nfree--;
        a = i;
    } else if (tail >= gap) { /* i keeps the tail; [gap][a][i] */
        a = rs_node_new(st, fi);
        rs_node(fi, nodes, a)->offset = at;
        rs_node(fi, nodes, a)->size = size;
        rs_link_before(fi, rs, nodes, a, i);
        I->offset = at + size;
        I->size = tail;
        fi->rekey(st, i, s);
        if (gap) rs_new_free(st, fi, rs, nodes, o, gap, a, RS_BEFORE);
    } else { /* i keeps the gap; [i][a][tail] */
        a = rs_node_new(st, fi);
        rs_node(fi, nodes, a)->offset = at;
        rs_node(fi, nodes, a)->size = size;
        rs_link_after(fi, nodes, a, i);
        I->size = gap;
        fi->rekey(st, i, s);
        if (tail) rs_new_free(st, fi, rs, nodes, at + size, tail, a, RS_AFTER);
    }
    rs_node(fi, nodes, a)->flags = by_handle ? RN_INUSE | RN_HANDLE : RN_INUSE;
    if (!by_handle) rs_hash_insert(st, fi, a);
    mpi_head_on_alloc(rs_head(st), at + size, size, size);
    return a;
}

/* The allocated node of a request (carved in the form asked for), or an error. */
RS_HOT int rs_alloc_node(void *st, const mp_fidx_t *fi, uint64_t size, uint64_t align,
                         int by_handle, uint32_t *node, uint64_t *offset)
{
    if (__builtin_expect(size == 0 || align == 0 || (align & (align - 1)) != 0, 0))
        return MP_EINVAL;
    uint32_t i = fi->find(st, size, align);
    if (__builtin_expect(i == MP_NIL, 0)) return MP_ENOSPACE;
    mp_rnode_t *n = rs_node(fi, rs_nodes(st, fi), i);
    uint64_t at = rs_align_up(n->offset, align);
    uint32_t spare = rs_spare_count(rs_set(st));
    if (__builtin_expect(spare < 2, 0) && rs_carve_cost(n, at, size) > spare)
        return MP_ENONODES;
    *node = rs_carve_as(st, fi, i, at, size, by_handle);
    *offset = at;
    return MP_OK;
}

RS_HOT int rs_alloc(void *st, const mp_fidx_t *fi, uint64_t size, uint64_t align,
                    uint64_t *out)
{
    uint32_t a;
    return rs_alloc_node(st, fi, size, align, 0, &a, out);
}

RS_HOT int rs_alloc_handle(void *st, const mp_fidx_t *fi, uint64_t size, uint64_t align,
                           uint64_t *offset, uint64_t *node)
{
    uint32_t a;
    int rc = rs_alloc_node(st, fi, size, align, 1, &a, offset);
    if (rc == MP_OK) *node = a;
    return rc;
}

/* Node `node` is a live range allocated by handle at `offset`. */
RS_HOT int rs_handle_ok(const void *st, const mp_fidx_t *fi, uint64_t node, uint64_t offset)
{
    if (node >= rs_cset(st)->top) return 0;
    const mp_rnode_t *n = rs_cnode(fi, rs_cnodes(st, fi), (uint32_t)node);
    return n->flags == (RN_INUSE | RN_HANDLE) && n->offset == offset;
}

/* Take node j out of the physical list and give it back to the spare stack. */
RS_HOT void rs_unlink(void *st, const mp_fidx_t *fi, uint32_t j)
{
    mp_rnode_t *nodes = rs_nodes(st, fi), *J = rs_node(fi, nodes, j);
    uint32_t p = J->prev, q = J->next;
    if (p != MP_NIL) rs_node(fi, nodes, p)->next = q;
    else rs_set(st)->first = q;
    if (q != MP_NIL) rs_node(fi, nodes, q)->prev = p;
    rs_node_release(st, fi, j);
}

/* Free allocated node i (already out of the hash table), merging with free
 * neighbours: a free neighbour absorbs the range in place (re-keyed; with two free
 * neighbours the larger absorbs the other too).  Returns the node of the merged
 * free range (filed in the index). */
RS_HOT uint32_t rs_release(void *st, const mp_fidx_t *fi, uint32_t i)
{
    mp_rset_t *rs = rs_set(st);
    mp_rnode_t *nodes = rs_nodes(st, fi), *I = rs_node(fi, nodes, i);
    uint32_t p = I->prev, q = I->next;
    mpi_assert((I->flags & (RN_INUSE | RN_FREE)) == RN_INUSE);
    /* i is allocated: a missing neighbour reads as i, not free (no branch) */
    int pf = (rs_node(fi, nodes, rs_sel32(p != MP_NIL, p, i))->flags & RN_FREE) != 0;
    int qf = (rs_node(fi, nodes, rs_sel32(q != MP_NIL, q, i))->flags & RN_FREE) != 0;
    uint64_t old;
    if (pf && qf) {
        /* the larger absorbs the other and i (chosen without a branch: which one is
         * data); the merged range starts at p either way */
        mp_rnode_t *P = rs_node(fi, nodes, p);
        uint64_t ps = P->size, qs = rs_node(fi, nodes, q)->size;
        uint32_t keep = rs_sel32(ps < qs, q, p), gone = p ^ q ^ keep;
        mp_rnode_t *K = rs_node(fi, nodes, keep);
        uint64_t start = P->offset, total = ps + I->size + qs;
        old = K->size;
        fi->remove(st, gone);
        K->offset = start;
        K->size = total;
        rs_unlink(st, fi, gone);
        rs_unlink(st, fi, i);
        rs->nfree--;
        fi->rekey(st, keep, old);
        return keep;
    }
    if (pf) {
        mp_rnode_t *P = rs_node(fi, nodes, p);
        old = P->size;
        P->size = old + I->size;
        rs_unlink(st, fi, i);
        fi->rekey(st, p, old);
        return p;
    }
    if (qf) {
        mp_rnode_t *Q = rs_node(fi, nodes, q);
        old = Q->size;
        Q->offset = I->offset;
        Q->size = old + I->size;
        rs_unlink(st, fi, i);
        fi->rekey(st, q, old);
        return q;
    }
    I->flags = RN_INUSE | RN_FREE;
    rs->nfree++;
    fi->insert(st, i);
    return i;
}

RS_HOT int rs_free(void *st, const mp_fidx_t *fi, uint64_t offset)
{
    uint32_t i = MP_NIL;
    int64_t loc = rs_find_node(st, fi, offset, &i);
    if (loc == RS_NOT_FOUND) return MP_ENOTALLOC;
    mp_head_t *h = rs_head(st);
    uint64_t size = rs_node(fi, rs_nodes(st, fi), i)->size;
    rs_loc_remove(st, fi, loc);
    mpi_head_on_free(h, size, size);
    rs_release(st, fi, i);
    return MP_OK;
}

/* Free allocated node i (by handle: not filed by offset). */
RS_HOT void rs_free_node(void *st, const mp_fidx_t *fi, uint32_t i)
{
    uint64_t size = rs_node(fi, rs_nodes(st, fi), i)->size;
    mpi_assert(rs_node(fi, rs_nodes(st, fi), i)->flags == (RN_INUSE | RN_HANDLE));
    mpi_head_on_free(rs_head(st), size, size);
    rs_release(st, fi, i);
}

RS_HOT int rs_free_handle(void *st, const mp_fidx_t *fi, uint64_t node, uint64_t offset)
{
    if (!rs_handle_ok(st, fi, node, offset)) return MP_ENOTALLOC;
    rs_free_node(st, fi, (uint32_t)node);
    return MP_OK;
}

RS_HOT int rs_size_of(const void *st, const mp_fidx_t *fi, uint64_t offset, uint64_t *out)
{
    uint32_t i = rs_lookup(st, fi, offset);
    if (i == MP_NIL) return MP_ENOTALLOC;
    *out = rs_cnode(fi, rs_cnodes(st, fi), i)->size;
    return MP_OK;
}

/* The handle form of strategy PRE (its name: tlsf, bestfit) over its free index FI
 * (&its mp_fidx_t): PRE##_alloc_h, _free_h and _realloc_h for its replay loop
 * (replay_loop.h: by node, unchecked; the first two inline), PRE##_alloc_handle,
 * _free_handle and _by_handle for its table (checked after each call in debug builds:
 * MPI_CHECKED(PRE, ...)). */
#define RS_HANDLE_FORM(PRE, FI)                                                                  \
    RS_HOT int PRE##_alloc_h(void *st, uint64_t size, uint64_t align, uint64_t *node)            \
    {                                                                                            \
        uint64_t off; /* most requests are unaligned: a copy with align folded to 1 */          \
        if (align == 1) return rs_alloc_handle(st, FI, size, 1, &off, node);                     \
        return rs_alloc_handle(st, FI, size, align, &off, node);                                 \
    }                                                                                            \
    RS_HOT void PRE##_free_h(void *st, uint64_t node) { rs_free_node(st, FI, (uint32_t)node); }  \
    static int PRE##_realloc_h(void *st, uint64_t node, uint64_t size, uint64_t align,           \
                               uint64_t *out)                                                    \
    {                                                                                            \
        return mpi_ranges_realloc_node(st, FI, node, size, align, out);                          \
    }                                                                                            \
    static int PRE##_alloc_handle(void *st, uint64_t size, uint64_t align, uint64_t *offset,     \
                                  uint64_t *node)                                                \
    {                                                                                            \
        return MPI_CHECKED(PRE, st, "alloc_handle",                                              \
                           rs_alloc_handle(st, FI, size, align, offset, node));                  \
    }                                                                                            \
    static int PRE##_free_handle(void *st, uint64_t node, uint64_t offset)                       \
    {                                                                                            \
        return MPI_CHECKED(PRE, st, "free_handle", rs_free_handle(st, FI, node, offset));        \
    }                                                                                            \
    static uint64_t PRE##_by_handle(const void *st) { return mpi_ranges_by_handle(st, FI); }

/* ---- the cold operations, compiled once (ranges.c) ------------------------ */
/* They reach the free index through fi's function pointers (one copy serves both
 * strategies); only alloc, free and size_of are worth a specialised copy. */

/* Bytes of a state for the parameters, 0 when they are invalid. */
uint64_t mpi_ranges_state_size(const mp_fidx_t *fi, uint64_t capacity, uint64_t max_blocks);
int mpi_ranges_init(void *st, const mp_fidx_t *fi, uint16_t kind, uint64_t capacity,
                    uint64_t max_blocks);
void mpi_ranges_reset(void *st, const mp_fidx_t *fi);
/* realloc: in place (shrink, or grow into a free successor), else moved to a new
 * range, else moved down into the free predecessor (overlapping: the caller uses
 * memmove).  On error nothing changed. */
int mpi_ranges_realloc(void *st, const mp_fidx_t *fi, uint64_t offset, uint64_t size,
                       uint64_t align, uint64_t *out);
/* ... of node `node`, allocated by handle (the replay loops' own ranges): the same
 * moves; the range stays one allocated by handle, its node in *out (another when it
 * moved). */
int mpi_ranges_realloc_node(void *st, const mp_fidx_t *fi, uint64_t node, uint64_t size,
                            uint64_t align, uint64_t *out);
/* mp_ops_t.by_handle: the live ranges allocated by handle (a walk of the nodes). */
uint64_t mpi_ranges_by_handle(const void *st, const mp_fidx_t *fi);
int mpi_ranges_walk(const void *st, const mp_fidx_t *fi, mp_walk_fn fn, void *ctx);
uint64_t mpi_ranges_free_ranges(const void *st);
/* mp_ops_t.hole: the nodes never handed out (ranges.c). */
uint64_t mpi_ranges_hole(const void *st, const mp_fidx_t *fi, uint64_t len, uint64_t *off);
/* mp_ops_t.grow_size / grow: twice the node budget (ranges.c). */
uint64_t mpi_ranges_grow_size(const void *st, const mp_fidx_t *fi);
int mpi_ranges_grow(const void *st, const mp_fidx_t *fi, void *dst, uint64_t dst_len);

/* ---- check (ranges_check.c) ---------------------------------------------- */
/* Invariants 1-7 of a state that may come from anywhere, then the free index
 * (fi->check): MP_OK, or MP_ECORRUPT with the first broken one written into msg. */
int mpi_ranges_check(const void *st, uint64_t state_len, const mp_fidx_t *fi, uint16_t kind,
                     char *msg, size_t msglen);

#endif /* MEMPOOL_RANGES_H */
