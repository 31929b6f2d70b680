/*
 * mempool.h -- the public C API of the mempool core (layer 1).
 *
 * C11, no Python.h.  Every strategy manages a span [0, capacity) of offsets and
 * keeps ALL of its state in one contiguous block of integers (principle 1):
 *
 *     +-----------+---------------------------------------------+
 *     | mp_head_t | strategy-specific tables (indices, bitmaps) |
 *     +-----------+---------------------------------------------+
 *     ^ state                                  state + head.state_size ^
 *
 * The block holds no pointers, so it can be memcpy'd (snapshot), placed in a
 * shared segment or a file, and used at any address.  A strategy never reads or
 * writes the memory it manages (principle 2).
 *
 * Every strategy exports
 *     uint64_t mp_<s>_state_size(params...)          0 when the params are invalid
 *     int      mp_<s>_init(void *state, params...)
 * and an mp_ops_t table (mp_<s>_ops) with the operations below.  Callers (the
 * binding, the replay loop, the pools) go through the table.
 *
 * Error model: every operation returns MP_OK or a negative MP_E* code, and a call
 * that returns an error has changed nothing (principle 3).
 *
 * The core's other headers: shared.h (shared pools' lock and block registry),
 * replay.h (traces and their replay), internal.h (what core files share that is no
 * API, and the prefix scheme of every name).
 */
#ifndef MEMPOOL_H
#define MEMPOOL_H

#include <stddef.h>
#include <stdint.h>

/* ---- status codes ---------------------------------------------------------- */
#define MP_OK 0
#define MP_ENOSPACE (-1)  /* nothing free fits the request                    */
#define MP_ENONODES (-2)  /* the state's fixed tables are full (max_blocks)   */
#define MP_ENOTALLOC (-3) /* offset is not the start of a live range          */
#define MP_EINVAL (-4)    /* bad argument (size 0, align not a power of two)  */
#define MP_ECORRUPT (-5)  /* check() found a broken invariant                 */

#define MP_NO_SPACE UINT64_MAX /* sentinel offset for "no range"            */
#define MP_NIL UINT32_MAX      /* sentinel index in index-linked tables     */

#define MP_STATE_MAGIC 0x5453504dU /* "MPST" little-endian */
#define MP_STATE_VERSION 1

/* ---- the strategies, listed once ---------------------------------------------
 * X(KIND, sname, number) for each strategy, in the order the bench and
 * mempool.STRATEGIES list them.  `number` is the kind stored in every state head
 * (files and segments keep it: never renumber).  Everything that enumerates the
 * strategies expands this list: the kinds below, the core's registry (core.c),
 * the binding's types (module.c).  A strategy `foo` supplies mp_foo_ops (its core
 * file) and mp_foo_type_ready() (its binding file, _native/type_foo.c). */
#define MP_STRATEGIES(X)      \
    X(TLSF, tlsf, 1)          \
    X(BESTFIT, bestfit, 2)    \
    X(BUDDY, buddy, 3)        \
    X(BITMAP, bitmap, 4)      \
    X(SLAB, slab, 5)          \
    X(BUMP, bump, 6)          \
    X(HEAP, heap, 7)

enum mp_kind {
#define MP_KIND_ENUM_(KIND, sname, number) MP_KIND_##KIND = number,
    MP_STRATEGIES(MP_KIND_ENUM_)
#undef MP_KIND_ENUM_
};

/*
 * The common head of every state block.  Counters that every strategy keeps
 * live here so that stats, snapshots and undo (alloc_many) are generic.
 *
 *   used      == sum of size_of() over live ranges            (rounding shows)
 *   requested == sum of the sizes asked for by live ranges    (<= used)
 *   live      == number of live ranges
 *   peak_used == max of used over time
 *   high_water== max over time of (offset + size_of) of any range handed out
 */
typedef struct mp_head {
    uint32_t magic;      /* MP_STATE_MAGIC                                    */
    uint16_t kind;       /* enum mp_kind                                      */
    uint16_t version;    /* MP_STATE_VERSION                                  */
    uint64_t state_size; /* bytes of the whole state block, head included     */
    uint64_t capacity;   /* bytes managed: offsets are in [0, capacity)      */
    uint64_t used;       /* see above                                         */
    uint64_t requested;  /* see above                                         */
    uint64_t live;       /* see above                                         */
    uint64_t peak_used;  /* see above                                         */
    uint64_t high_water; /* see above                                         */
    uint64_t cursor;     /* strategy scratch that undo must restore (next fit) */
    uint64_t param[6];   /* the construction parameters (restore/attach)      */
} mp_head_t;

/* head.param[MP_PARAM_FIXED] of a strategy that grows (TLSF, BestFit, Bump, Heap): 1 when
 * its node budget is a hard bound (the user asked: grow=False), so grow_size() is 0;
 * else 0.  check() refuses any other value. */
#define MP_PARAM_FIXED 5

/* segments(): one call per range in address order; return non-zero to stop. */
typedef int (*mp_walk_fn)(void *ctx, uint64_t offset, uint64_t size, int allocated);

/* The operation table of a strategy.  All functions are required. */
typedef struct mp_ops {
    const char *name; /* "tlsf", "bestfit", ...                             */
    uint16_t kind;    /* enum mp_kind                                       */
    /* size >= 1, align a power of two; *out = offset */
    int (*alloc)(void *st, uint64_t size, uint64_t align, uint64_t *out);
    int (*free)(void *st, uint64_t offset);
    /* *out = new offset (== offset when in place); `align` applies when the range
     * moves; on error nothing changed */
    int (*realloc)(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out);
    int (*size_of)(const void *st, uint64_t offset, uint64_t *out);
    void (*reset)(void *st);
    /* Verifies every invariant.  Must never crash or loop on arbitrary bytes
     * (the state may come from a file or a segment): every index is bounds
     * checked before it is followed and every walk is bounded.  On failure
     * writes a message into msg and returns MP_ECORRUPT. */
    int (*check)(const void *st, uint64_t state_len, char *msg, size_t msglen);
    int (*walk)(const void *st, mp_walk_fn fn, void *ctx);
    uint64_t (*largest_free)(const void *st); /* largest size alloc(size, 1) serves */
    uint64_t (*available)(const void *st);    /* bytes not handed out           */
    uint64_t (*free_ranges)(const void *st);  /* number of free ranges          */
    /* Optional (NULL: none).  After alloc/realloc of `size` aligned to `align`
     * returned MP_ENOSPACE: when the request itself is beyond what the strategy ever
     * hands out (a size class limit, an item's size or alignment), write the reason
     * into buf and return 1; else return 0. */
    int (*why_nospace)(const void *st, uint64_t size, uint64_t align, char *buf, size_t buflen);
    /* 1: every range is one item of a fixed size, serving requests up to that size
     * only: callers must not round a request up (the shared pools' cache does). */
    int fixed_size;
    /* Optional (NULL: the state never grows; Slab, Bitmap, Buddy: their tables are
     * fixed by their parameters).  After an operation returned MP_ENONODES (the node
     * budget is spent): grow_size() is the byte length of the next larger state (twice
     * the budget), 0 when there is none; grow() writes into dst (dst_len >=
     * grow_size(st) bytes, apart from st) a state holding the same ranges at the same
     * offsets with that budget, node indices kept (tables refiled).  st is read only:
     * the caller switches to dst when it returns MP_OK. */
    uint64_t (*grow_size)(const void *st); /* 0 too when head.param[MP_PARAM_FIXED] is 1 */
    int (*grow)(const void *st, void *dst, uint64_t dst_len);
    /* Optional (NULL: every byte counts).  The one span of the state whose bytes carry
     * nothing (nodes never handed out; Bump's entries above its stack, zero): its length,
     * its offset in *off; 0 when there is none.  Reads only the first `len` bytes of st
     * (a snapshot that left the span out: restore puts zeros there and checks the rest),
     * so it answers on untrusted bytes without reading past them. */
    uint64_t (*hole)(const void *st, uint64_t len, uint64_t *off);
    /* Optional (NULL: replay.c's loop calls alloc / free / realloc through this table).
     * The timed loop of mp_replay (replay.h) compiled inside the strategy's own file with
     * its alloc and free inlined (replay_loop.h): same ops, same results, no call through
     * the table per op.  ptr[id] (id <= max_id) is all MP_NO_SPACE on entry and on
     * return: the loop keeps each live id's range in it (by node: ranges.h's handle
     * form) and frees the ranges still live at the end; returns the number of failed
     * alloc/realloc calls.  Debug builds leave it NULL (their table checks the state
     * after every call). */
    uint64_t (*replay)(void *st, uint64_t n, const uint8_t *op, const uint32_t *id,
                       const uint64_t *size, const uint32_t *align, uint32_t max_id,
                       uint64_t *ptr);
    /* Optional (NULL: none; TLSF and BestFit have them).  The handle form, as
     * OffsetAllocator frees: alloc_handle changes the state as alloc(size, align) would
     * (the same range) and gives its offset and its node; the range is not filed by
     * offset, so free_handle(node, offset) gives it back without a lookup, and free /
     * size_of / realloc by offset do not see it (MP_ENOTALLOC).  free_handle is
     * MP_ENOTALLOC unless node is a live range allocated by handle at exactly that
     * offset.  by_handle: how many live ranges were allocated by handle (a walk of the
     * nodes; a pool's state must have none: pools hold ranges by offset). */
    int (*alloc_handle)(void *st, uint64_t size, uint64_t align, uint64_t *offset,
                        uint64_t *node);
    int (*free_handle)(void *st, uint64_t node, uint64_t offset);
    uint64_t (*by_handle)(const void *st);
    /* 1: the functions read mp_tx_replaying (journal.h) to tell a shadow from its state
     * (the binding's wrapped tables); a journal sets it only for such a table (a
     * thread-local store costs a call in a shared library).  0 for the strategies. */
    int reads_replaying;
} mp_ops_t;

/* ---- helpers every caller may use ------------------------------------------ */
static inline int mp_is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* Validate a state block's head against the table that claims it (no deep check). */
int mp_head_validate(const void *st, uint64_t state_len, const mp_ops_t *ops, char *msg,
                     size_t msglen);

/* The state size a head's own kind, capacity and parameters need (what init and grow
 * make), for the strategies whose snapshot may leave a hole (mp_ops_t.hole: TLSF,
 * BestFit, Bump, Heap); 0 for the others or for parameters no state has. */
uint64_t mp_head_state_size(const mp_head_t *h);

/* Look a strategy's table up by kind, or NULL. */
const mp_ops_t *mp_ops_by_kind(unsigned kind);

/* Every strategy's operation table: mp_tlsf_ops, mp_bestfit_ops, ... */
#define MP_OPS_DECL_(KIND, sname, number) extern const mp_ops_t mp_##sname##_ops;
MP_STRATEGIES(MP_OPS_DECL_)
#undef MP_OPS_DECL_

/* ---- the strategies ---------------------------------------------------------- */
/* TLSF: O(1) two-level segregated fit, exact sizes, merges on free. */
uint64_t mp_tlsf_state_size(uint64_t capacity, uint64_t max_blocks);
int mp_tlsf_init(void *st, uint64_t capacity, uint64_t max_blocks);
/* TLSF's compact layout, for a capacity below MP_TLSF_COMPACT_CAP (0 / MP_EINVAL at or
 * above it): 8 second-level bins per power of two, and only the bins such a pool's sizes
 * need (tlsf.c); the same operation table serves both layouts (head.param[1] says which).
 * The binding's TLSF type makes a pool below the cap compact. */
#define MP_TLSF_COMPACT_CAP ((uint64_t)1 << 20)
uint64_t mp_tlsf_compact_state_size(uint64_t capacity, uint64_t max_blocks);
int mp_tlsf_compact_init(void *st, uint64_t capacity, uint64_t max_blocks);
/* The layout a pool of this capacity gets (what the binding's TLSF type makes): the
 * compact one below MP_TLSF_COMPACT_CAP, else the full one. */
uint64_t mp_tlsf_sized_state_size(uint64_t capacity, uint64_t max_blocks);
int mp_tlsf_sized_init(void *st, uint64_t capacity, uint64_t max_blocks);

/* BestFit: exact best fit in O(log n): per size bin an AVL tree keyed by (size, offset),
 * whose nodes carry the largest aligned fit of their subtree (bestfit.c). */
uint64_t mp_bestfit_state_size(uint64_t capacity, uint64_t max_blocks);
int mp_bestfit_init(void *st, uint64_t capacity, uint64_t max_blocks);

/* Slab: equal items carved page by page, freed items reused first (slab.c).
 * item_size in [1, 2^30), page_size a multiple of the item alignment holding at
 * least one item, capacity >= page_size. */
uint64_t mp_slab_state_size(uint64_t capacity, uint64_t item_size, uint64_t page_size);
int mp_slab_init(void *st, uint64_t capacity, uint64_t item_size, uint64_t page_size);
/* MP_OK, or MP_EINVAL with the first rule the parameters break written into msg. */
int mp_slab_explain(uint64_t capacity, uint64_t item_size, uint64_t page_size, char *msg,
                    size_t msglen);
/* n contiguous items (n >= 1); freed by free() or mp_slab_free_array(st, off, n),
 * which is MP_EINVAL when n is not the array's length. */
int mp_slab_alloc_array(void *st, uint64_t n, uint64_t *out);
int mp_slab_free_array(void *st, uint64_t offset, uint64_t n);
int mp_slab_items_at(const void *st, uint64_t offset, uint64_t *n); /* items of a live range */
typedef struct mp_slab_info {
    uint64_t item_size, page_size, stride, align, per_page, pages, free_pages, free_items;
} mp_slab_info_t;
void mp_slab_info(const void *st, mp_slab_info_t *out);

/* Bump: a bump pointer over a stack of live ranges, with marks (bump.c). */
uint64_t mp_bump_state_size(uint64_t capacity, uint64_t max_blocks);
int mp_bump_init(void *st, uint64_t capacity, uint64_t max_blocks);
void mp_bump_mark(const void *st, uint64_t *serial, uint64_t *depth);
int mp_bump_mark_valid(const void *st, uint64_t serial, uint64_t depth);
int mp_bump_rewind(void *st, uint64_t serial, uint64_t depth); /* MP_EINVAL: stale mark */
typedef struct mp_bump_info {
    uint64_t max_blocks, depth, top;
} mp_bump_info_t;
void mp_bump_info(const void *st, mp_bump_info_t *out);

/* Heap: slab classes (<= 256 B), 256 B page fragments, TLSF for the rest, all in
 * one span; page_size a power of two in [4 KiB, 64 KiB]; max_blocks bounds the
 * embedded TLSF's ranges (pages and large blocks). */
uint64_t mp_heap_state_size(uint64_t capacity, uint64_t page_size, uint64_t max_blocks);
int mp_heap_init(void *st, uint64_t capacity, uint64_t page_size, uint64_t max_blocks);
uint64_t mp_heap_default_max_blocks(uint64_t capacity); /* == mp_default_max_blocks */
/* What size_of() of a new range of (size, align) would be: the class size, the
 * fragment run, or size itself (TLSF).  MP_EINVAL for size 0 or a bad align. */
int mp_heap_size_class(const void *st, uint64_t size, uint64_t align, uint64_t *out);
/* Which allocator holds the live range at `off`: 0 = TLSF, 1 = slab class,
 * 2 = fragments; MP_ENOTALLOC when no live range starts there. */
int mp_heap_served_by(const void *st, uint64_t off);
/* Buddy: classes min_block * fanout**k up to max_block (0 = the largest class that
 * fits the capacity); min_block and fanout powers of two, fanout >= 2.  The usable
 * span (head.capacity) is the capacity rounded down to a multiple of min_block. */
uint64_t mp_buddy_state_size(uint64_t capacity, uint64_t min_block, uint64_t max_block,
                             uint64_t fanout);
int mp_buddy_init(void *st, uint64_t capacity, uint64_t min_block, uint64_t max_block,
                  uint64_t fanout);
unsigned mp_buddy_classes(const void *st);
uint64_t mp_buddy_class_size(const void *st, unsigned k);         /* 0 beyond the classes */
int mp_buddy_class_of(const void *st, uint64_t size, unsigned *k); /* MP_EINVAL: no class */

/* Bitmap: capacity // block_size fixed blocks (block_size >= 1), one bit each,
 * searched a word at a time; next fit (first_fit = 0) or lowest run (1).  The usable
 * span (head.capacity) is blocks * block_size. */
uint64_t mp_bitmap_state_size(uint64_t capacity, uint64_t block_size, int first_fit);
int mp_bitmap_init(void *st, uint64_t capacity, uint64_t block_size, int first_fit);

/* The default node budget of the range strategies (TLSF, BestFit), of Bump's stack and
 * of the Heap's TLSF: one node per 8 KiB of capacity, at least 32, at most 2^20, so
 * that the state stays near 1% of the capacity (bench/metadata.py); a state that runs
 * out grows (mp_ops_t.grow). */
uint64_t mp_default_max_blocks(uint64_t capacity);
/* A compact TLSF's (below MP_TLSF_COMPACT_CAP) that may grow: one node per 8 KiB, at
 * least 8, so that its state stays under 2 % of the capacity from 64 KiB up (it
 * grows on the fifth to eighth live block of a 64 KiB pool); one that may not grow
 * (grow=False) keeps mp_default_max_blocks. */
uint64_t mp_tlsf_compact_max_blocks(uint64_t capacity);
/* The budget where the state cannot grow (file and shared pools): the same, at least
 * 1024 (never more than the capacity). */
uint64_t mp_fixed_max_blocks(uint64_t capacity);

#endif /* MEMPOOL_H */
