/*
 * bump.c -- a bump pointer with a stack of live ranges, marks and rewind
 * (context-allocator's BumpAllocator, with its defect fixed: a failed allocation
 * changes nothing, so the last range and every mark survive it).
 *
 * Behaviour:
 *   - alloc(size, align) places the range at align_up(top, align) and moves the
 *     top to its end: offsets only grow.  Every range is pushed on a stack of at
 *     most max_blocks entries (MP_ENONODES when full).
 *   - free(offset) of the most recent range (the stack's top entry) pops it, then
 *     pops every dead range below it; the top goes back to the end of the highest
 *     entry left (0 when none), so alignment gaps are reclaimed too.  free() of any
 *     other live range only marks its entry dead (used and live drop; the bytes
 *     come back when everything above it is gone).  An offset that is not the
 *     start of a live range is MP_ENOTALLOC (entries are sorted by offset: binary
 *     search).
 *   - realloc of the most recent range grows or shrinks it in place when it fits;
 *     another range shrinks in place (its tail is unusable until it is popped) and
 *     moves when it grows (alloc at the top, then the old entry is marked dead).
 *   - mark() = (serial, depth): the serial counter (head.cursor: the number the
 *     next pushed entry gets) and the stack depth.  rewind(mark) pops every entry
 *     above depth, then, as free does, the dead entries below it.  A mark is
 *     valid while the entries below it are the ones that were there when it was
 *     taken: depth <= current depth, entry depth-1 has a serial < mark serial and
 *     entry depth (if any) a serial >= it, and the mark is not older than the last
 *     reset (reset moves `epoch` past every serial handed out).  A mark is stale
 *     once the stack went below its depth (a free or an older rewind) or after a
 *     reset: rewind refuses it with MP_EINVAL and changes nothing.
 *
 * State layout (integers only):
 *
 *   +-----------+------------------------------+------------------------------------------+
 *   | mp_head_t | bump_hdr                     | entry[max_blocks]                        |
 *   | cursor =  | capacity, max_blocks, depth, | offset, size, tag = serial << 1 | dead   |
 *   | serial    | top, epoch                   | (24 bytes; slots >= depth are all zero)  |
 *   +-----------+------------------------------+------------------------------------------+
 *
 * Invariants (bump_check):
 *  B1. param[0] == max_blocks (1 <= max_blocks < 2^32 - 1), the header's copies of
 *      capacity and max_blocks match the head, state_size matches,
 *      depth <= max_blocks, epoch <= serial <= 2^62.
 *  B2. Entries [0, depth): size >= 1, inside the span, each starting at or after
 *      the end of the one below (sorted, disjoint); serials strictly increasing,
 *      >= epoch and < serial; the tag holds only the serial and the dead bit.
 *  B3. The top entry is live; top == its end (0 when the stack is empty).
 *  B4. Entries [depth, max_blocks) are all zero.
 *  B5. head.live == live entries, head.used == head.requested == their sizes;
 *      peak_used >= used; high_water <= capacity and >= top.
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

typedef struct bump_entry {
    uint64_t offset;
    uint64_t size;
    uint64_t tag; /* serial << 1 | dead */
} bump_entry_t;

typedef struct bump_hdr {
    uint64_t capacity; /* == head.capacity: a flipped capacity is noticed */
    uint64_t max_blocks;
    uint64_t depth;
    uint64_t top;
    uint64_t epoch; /* marks with a serial below it are stale (reset) */
} bump_hdr_t;

#define OFF_HDR ((uint64_t)sizeof(mp_head_t))
#define OFF_STACK (OFF_HDR + (uint64_t)sizeof(bump_hdr_t))
#define DEAD 1u
/* serials live in tag bits 1..63; check() bounds them far below that (2^62 pushes
 * would take a century), so an accepted state never overflows the tag */
#define SERIAL_MAX ((uint64_t)1 << 62)

static inline bump_hdr_t *HD(void *st) { return (bump_hdr_t *)((char *)st + OFF_HDR); }
static inline const bump_hdr_t *CHD(const void *st)
{
    return (const bump_hdr_t *)((const char *)st + OFF_HDR);
}
static inline bump_entry_t *STK(void *st) { return (bump_entry_t *)((char *)st + OFF_STACK); }
static inline const bump_entry_t *CSTK(const void *st)
{
    return (const bump_entry_t *)((const char *)st + OFF_STACK);
}

uint64_t mp_bump_state_size(uint64_t capacity, uint64_t max_blocks)
{
    if (capacity == 0 || max_blocks == 0 || max_blocks >= MP_NIL) return 0;
    return OFF_STACK + max_blocks * sizeof(bump_entry_t);
}

static void bump_reset(void *st)
{
    mp_head_t *m = st;
    bump_hdr_t *h = HD(st);
    memset(STK(st), 0, (size_t)(h->depth * sizeof(bump_entry_t)));
    h->depth = 0;
    h->top = 0;
    /* every serial handed out so far is now below epoch: older marks are stale */
    m->cursor++;
    h->epoch = m->cursor;
    mpi_head_on_reset(m);
}

int mp_bump_init(void *st, uint64_t capacity, uint64_t max_blocks)
{
    uint64_t size = mp_bump_state_size(capacity, max_blocks);
    if (size == 0) return MP_EINVAL;
    memset(st, 0, (size_t)size);
    mp_head_t *m = st;
    mpi_head_init(m, MP_KIND_BUMP, size, capacity);
    m->param[0] = max_blocks;
    HD(st)->capacity = capacity;
    HD(st)->max_blocks = max_blocks;
    return MP_OK;
}

/* ---- alloc / free ------------------------------------------------------------------- */
static int bump_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    mp_head_t *m = st;
    bump_hdr_t *h = HD(st);
    if (h->top > UINT64_MAX - (align - 1)) return MP_ENOSPACE;
    uint64_t at = (h->top + align - 1) & ~(align - 1);
    if (at > m->capacity || size > m->capacity - at) return MP_ENOSPACE;
    if (h->depth >= h->max_blocks) return MP_ENONODES;
    mpi_assert(!h->depth || STK(st)[h->depth - 1].offset + STK(st)[h->depth - 1].size <= at);
    bump_entry_t *e = &STK(st)[h->depth++];
    e->offset = at;
    e->size = size;
    e->tag = m->cursor++ << 1;
    h->top = at + size;
    mpi_head_on_alloc(m, h->top, size, size);
    *out = at;
    return MP_OK;
}

/* Index of the live entry at offset, or -1. */
static int64_t find_live(const void *st, uint64_t offset)
{
    const bump_hdr_t *h = CHD(st);
    const bump_entry_t *s = CSTK(st);
    uint64_t n = h->depth;
    if (n && s[n - 1].offset == offset) return (int64_t)(n - 1); /* the common case */
    uint64_t lo = 0, hi = n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (s[mid].offset < offset) lo = mid + 1;
        else hi = mid;
    }
    if (lo < n && s[lo].offset == offset && !(s[lo].tag & DEAD)) return (int64_t)lo;
    return -1;
}

/* Pop entries down to depth d (live ones leave the counters), then the dead ones
 * below; the top becomes the end of the highest entry left. */
static void pop_to(void *st, uint64_t d)
{
    mp_head_t *m = st;
    bump_hdr_t *h = HD(st);
    bump_entry_t *s = STK(st);
    while (h->depth > d || (h->depth && (s[h->depth - 1].tag & DEAD))) {
        bump_entry_t *e = &s[--h->depth];
        if (!(e->tag & DEAD)) mpi_head_on_free(m, e->size, e->size);
        memset(e, 0, sizeof *e);
    }
    h->top = h->depth ? s[h->depth - 1].offset + s[h->depth - 1].size : 0;
}

static void mark_dead(void *st, uint64_t i)
{
    mp_head_t *m = st;
    bump_entry_t *e = &STK(st)[i];
    e->tag |= DEAD;
    mpi_head_on_free(m, e->size, e->size);
}

static int bump_free(void *st, uint64_t offset)
{
    int64_t i = find_live(st, offset);
    if (i < 0) return MP_ENOTALLOC;
    if ((uint64_t)i + 1 == HD(st)->depth) pop_to(st, (uint64_t)i);
    else mark_dead(st, (uint64_t)i);
    return MP_OK;
}

static int bump_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    int64_t i = find_live(st, offset);
    if (i < 0) return MP_ENOTALLOC;
    *out = CSTK(st)[i].size;
    return MP_OK;
}

static int bump_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    int64_t i = find_live(st, offset);
    if (i < 0) return MP_ENOTALLOC;
    mp_head_t *m = st;
    bump_hdr_t *h = HD(st);
    bump_entry_t *e = &STK(st)[i];
    uint64_t old = e->size;
    if ((uint64_t)i + 1 == h->depth) { /* the most recent range: in place or nothing */
        if (size > m->capacity - offset) return MP_ENOSPACE;
        e->size = size;
        h->top = offset + size;
        mpi_head_on_resize(m, h->top, old, size, old, size);
        *out = offset;
        return MP_OK;
    }
    if (size <= old) { /* shrink in place; the tail waits for the pop */
        e->size = size;
        mpi_head_on_resize(m, offset + size, old, size, old, size);
        *out = offset;
        return MP_OK;
    }
    uint64_t at;
    int rc = bump_alloc(st, size, align, &at);
    if (rc) return rc;
    mark_dead(st, (uint64_t)i);
    *out = at;
    return MP_OK;
}

/* ---- marks ----------------------------------------------------------------------------- */
void mp_bump_mark(const void *st, uint64_t *serial, uint64_t *depth)
{
    *serial = ((const mp_head_t *)st)->cursor;
    *depth = CHD(st)->depth;
}

int mp_bump_mark_valid(const void *st, uint64_t serial, uint64_t depth)
{
    const mp_head_t *m = st;
    const bump_hdr_t *h = CHD(st);
    const bump_entry_t *s = CSTK(st);
    if (serial < h->epoch || serial > m->cursor || depth > h->depth) return 0;
    if (depth && (s[depth - 1].tag >> 1) >= serial) return 0;
    if (depth < h->depth && (s[depth].tag >> 1) < serial) return 0;
    return 1;
}

static int rewind_to(void *st, uint64_t serial, uint64_t depth)
{
    if (!mp_bump_mark_valid(st, serial, depth)) return MP_EINVAL;
    pop_to(st, depth);
    return MP_OK;
}

int mp_bump_rewind(void *st, uint64_t serial, uint64_t depth)
{
    return MPI_CHECKED(bump, st, "rewind", rewind_to(st, serial, depth));
}

void mp_bump_info(const void *st, mp_bump_info_t *out)
{
    const bump_hdr_t *h = CHD(st);
    out->max_blocks = h->max_blocks;
    out->depth = h->depth;
    out->top = h->top;
}

/* ---- queries ---------------------------------------------------------------------------- */
static uint64_t bump_largest(const void *st)
{
    return ((const mp_head_t *)st)->capacity - CHD(st)->top;
}

static int bump_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    const mp_head_t *m = st;
    const bump_hdr_t *h = CHD(st);
    const bump_entry_t *s = CSTK(st);
    uint64_t pos = 0;
    int r;
    for (uint64_t i = 0; i < h->depth; i++) {
        if (s[i].tag & DEAD) continue;
        if (s[i].offset > pos && (r = fn(ctx, pos, s[i].offset - pos, 0))) return r;
        if ((r = fn(ctx, s[i].offset, s[i].size, 1))) return r;
        pos = s[i].offset + s[i].size;
    }
    if (pos < m->capacity && (r = fn(ctx, pos, m->capacity - pos, 0))) return r;
    return MP_OK;
}

/* The free segments of walk(): the gaps between live ranges and the tail. */
static uint64_t bump_free_ranges(const void *st)
{
    const mp_head_t *m = st;
    const bump_hdr_t *h = CHD(st);
    const bump_entry_t *s = CSTK(st);
    uint64_t pos = 0, n = 0;
    for (uint64_t i = 0; i < h->depth; i++) {
        if (s[i].tag & DEAD) continue;
        n += s[i].offset > pos;
        pos = s[i].offset + s[i].size;
    }
    return n + (pos < m->capacity);
}

/* ---- check ------------------------------------------------------------------------------ */
typedef unsigned long long ull;

static int bump_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    if (len < OFF_STACK) MPI_FAIL("state too short: %llu bytes", (ull)len);
    const mp_head_t *m = st;
    const bump_hdr_t *h = CHD(st);
    if (m->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", m->magic);
    if (m->kind != MP_KIND_BUMP) MPI_FAIL("state is of kind %u, not %u", m->kind, MP_KIND_BUMP);
    if (m->version != MP_STATE_VERSION)
        MPI_FAIL("state version %u, expected %u", m->version, MP_STATE_VERSION);
    uint64_t want = mp_bump_state_size(m->capacity, m->param[0]);
    if (want == 0) MPI_FAIL("bad parameters: capacity %llu, max_blocks %llu", (ull)m->capacity,
                            (ull)m->param[0]);
    if (m->state_size != want || len < want)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)m->state_size,
                 (ull)len, (ull)want);
    /* B1 */
    if (m->param[MP_PARAM_FIXED] > 1)
        MPI_FAIL("fixed-budget flag is %llu, not 0 or 1", (ull)m->param[MP_PARAM_FIXED]);
    if (h->max_blocks != m->param[0] || h->capacity != m->capacity)
        MPI_FAIL("max_blocks or capacity in the header does not match the head");
    if (h->depth > h->max_blocks)
        MPI_FAIL("stack depth %llu beyond max_blocks %llu", (ull)h->depth, (ull)h->max_blocks);
    if (m->cursor > SERIAL_MAX) MPI_FAIL("serial %llu beyond 2^62", (ull)m->cursor);
    if (h->epoch > m->cursor) MPI_FAIL("epoch %llu beyond the serial %llu", (ull)h->epoch,
                                       (ull)m->cursor);
    /* B2, B3, B5 */
    const bump_entry_t *s = CSTK(st);
    uint64_t end = 0, live = 0, used = 0, prev_serial = 0;
    for (uint64_t i = 0; i < h->depth; i++) {
        const bump_entry_t *e = &s[i];
        if (e->size == 0) MPI_FAIL("entry %llu has size 0", (ull)i);
        if (e->offset < end)
            MPI_FAIL("entry %llu at %llu starts before the end %llu of the one below", (ull)i,
                     (ull)e->offset, (ull)end);
        if (e->offset > m->capacity || e->size > m->capacity - e->offset)
            MPI_FAIL("entry %llu [%llu, +%llu) leaves the span", (ull)i, (ull)e->offset,
                     (ull)e->size);
        uint64_t serial = e->tag >> 1;
        if (serial < h->epoch || serial >= m->cursor || (i && serial <= prev_serial))
            MPI_FAIL("entry %llu has serial %llu (epoch %llu, next %llu, below %llu)", (ull)i,
                     (ull)serial, (ull)h->epoch, (ull)m->cursor, (ull)prev_serial);
        prev_serial = serial;
        if (!(e->tag & DEAD)) {
            live++;
            used += e->size;
        }
        end = e->offset + e->size;
    }
    if (h->depth && (s[h->depth - 1].tag & DEAD)) MPI_FAIL("the top entry is dead");
    if (h->top != end) MPI_FAIL("top %llu, the stack ends at %llu", (ull)h->top, (ull)end);
    /* B4 */
    for (uint64_t i = h->depth; i < h->max_blocks; i++)
        if (s[i].offset || s[i].size || s[i].tag) MPI_FAIL("stack slot %llu above the top is used",
                                                           (ull)i);
    if (live != m->live) MPI_FAIL("%llu live ranges, count says %llu", (ull)live, (ull)m->live);
    if (used != m->used || used != m->requested)
        MPI_FAIL("live ranges hold %llu bytes, used says %llu, requested %llu", (ull)used,
                 (ull)m->used, (ull)m->requested);
    MPI_CHECK_PEAK(m);
    if (m->high_water > m->capacity || m->high_water < h->top)
        MPI_FAIL("high_water %llu, top %llu, capacity %llu", (ull)m->high_water, (ull)h->top,
                 (ull)m->capacity);
    return MP_OK;
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
/* ---- growth: twice the stack, the live entries copied, the rest zero (B4) ---------- */
static uint64_t bump_grown(const void *st)
{
    uint64_t m = CHD(st)->max_blocks, n = m * 2;
    if (n >= MP_NIL) n = MP_NIL - 1;
    return n > m ? n : 0;
}

static uint64_t bump_grow_size(const void *st)
{
    if (((const mp_head_t *)st)->param[MP_PARAM_FIXED]) return 0;
    uint64_t n = bump_grown(st);
    return n ? mp_bump_state_size(((const mp_head_t *)st)->capacity, n) : 0;
}

static int bump_grow(const void *st, void *dst, uint64_t dst_len)
{
    uint64_t n = bump_grown(st), size = bump_grow_size(st);
    const bump_hdr_t *h = CHD(st);
    if (size == 0 || dst_len < size || h->depth > h->max_blocks) return MP_EINVAL;
    uint64_t used = OFF_STACK + h->depth * sizeof(bump_entry_t);
    memcpy(dst, st, (size_t)used);
    memset((char *)dst + used, 0, (size_t)(size - used));
    mp_head_t *m = dst;
    m->state_size = size;
    m->param[0] = n;
    HD(dst)->max_blocks = n;
    return MP_OK;
}

/* The entries above the stack, [depth, max_blocks): zero (B4), left out of snapshots. */
static uint64_t bump_hole(const void *st, uint64_t len, uint64_t *off)
{
    if (len < OFF_STACK) return 0;
    const bump_hdr_t *h = CHD(st);
    if (h->depth >= h->max_blocks || h->max_blocks >= MP_NIL) return 0;
    *off = OFF_STACK + h->depth * sizeof(bump_entry_t);
    return (h->max_blocks - h->depth) * sizeof(bump_entry_t);
}

MPI_OPS_TABLE(bump,
    .name = "bump",
    .kind = MP_KIND_BUMP,
    .alloc = bump_alloc,
    .free = bump_free,
    .realloc = bump_realloc,
    .size_of = bump_size_of,
    .reset = bump_reset,
    .check = bump_check,
    .walk = bump_walk,
    .largest_free = bump_largest,
    .available = mpi_head_available,
    .free_ranges = bump_free_ranges,
    .grow_size = bump_grow_size,
    .grow = bump_grow,
    .hole = bump_hole);
