/*
 * bitmap.c -- fixed-size blocks tracked by a bitmap, next fit or first fit.
 *
 * context-allocator's BitSetAllocator over offsets, with its defects fixed:
 *   - The span holds N = capacity // block_size blocks (block_size >= 1, any
 *     value); the usable span (head.capacity) is N * block_size, the tail beyond
 *     it is never handed out.  The bitmap has one bit per block, N >= 1 of them
 *     (the seed sized it N/64 bytes and could allocate nothing below 64 blocks).
 *   - A request of `size` bytes takes n = ceil(size / block_size) contiguous
 *     blocks; size_of is n * block_size.  Runs may cross words.
 *   - Alignment is measured from offset 0: block i is at i * block_size, so an
 *     align that divides block_size is free and a larger one admits every
 *     step-th block, step = align >> ctz(block_size) (the seed measured from the
 *     wrong end and ignored align for runs crossing words).
 *   - Search: find the first free block at or after a position (a word at a
 *     time, count-trailing-zeros), round it up to the step, then look for a used
 *     block inside the candidate run (again a word at a time); on a hit, start
 *     again after it.  Next fit (the default): the lowest fitting run that starts
 *     at or after head.cursor -- where the last run handed out ended -- else the
 *     lowest fitting run before it (wrapping round).  first_fit: the lowest
 *     fitting run (head.cursor stays 0).
 *   - free(offset) needs the run's length: a second bitmap marks the first block
 *     of every live run.  A run ends at the next free block or the next run
 *     start.  An offset that is not a run start (interior, free, unknown) is
 *     refused.
 *   - realloc: the same block count stays; fewer blocks free the tail; more
 *     blocks grow in place when the following blocks are free; else the run is
 *     freed, a new run is searched as alloc does (it may overlap the old one: the
 *     caller copies with memmove), and when none fits the old run is put back
 *     exactly as it was (the seed had freed it for good).
 *
 * State layout (all integers; after mp_head_t):
 *
 *   +----------+----------------+-----------------+---------------------------------+
 *   | bm_hdr_t | used[nwords]   | start[nwords]   | waste[waste_words]              |
 *   |          | bit i: block i | bit i: a live   | per block, waste_bits wide: for |
 *   |          | is handed out  | run starts at i | a run start, n*block_size - size|
 *   +----------+----------------+-----------------+---------------------------------+
 *   Bit i of a bitmap is bit (i & 63) of word i >> 6.  waste_bits is 0 (block_size
 *   1) or the smallest power of two that holds block_size - 1, so fields never
 *   straddle words.
 *
 * Invariants (checked by bm_check):
 *  M1. The header equals what the parameters (head.param[0..2]: capacity,
 *      block_size, first_fit) give; head.capacity == N * block_size;
 *      param[3..5] are 0.
 *  M2. Padding: bits at or beyond N are 1 in used (searches stop there), 0 in
 *      start; waste fields at or beyond N are 0.
 *  M3. start is a subset of used, and every used block that follows a free block
 *      (or is block 0) is a run start.
 *  M4. waste is non-zero only at run starts and below block_size.
 *  M5. head.live == run starts; head.used == used blocks * block_size;
 *      head.requested == head.used - the sum of waste; peak_used >= used;
 *      high_water <= capacity; cursor < N (0 with first_fit).
 */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define BM_MAX_BLOCKS ((uint64_t)1 << 40)
#define BM_NONE UINT64_MAX

typedef struct bm_hdr {
    uint64_t block_size;
    uint64_t nblocks;     /* N                                              */
    uint64_t nwords;      /* words of each of used[] and start[]            */
    uint64_t waste_words; /* words of waste[]                               */
    uint32_t waste_bits;  /* field width: 0, 1, 2, 4, ..., 64               */
    uint32_t first_fit;   /* 1: lowest run; 0: next fit from head.cursor    */
    uint32_t bs_shift;    /* log2(block_size) when it is a power of two, else 64 */
    uint32_t bs_tz;       /* ctz(block_size)                                */
} bm_hdr_t;

#define BM_HDR_OFF ((uint64_t)sizeof(mp_head_t))
#define BM_MAP_OFF (BM_HDR_OFF + (uint64_t)sizeof(bm_hdr_t))

typedef struct bm_plan {
    bm_hdr_t h;
    uint64_t size;
} bm_plan_t;

static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int msb64(uint64_t x) { return 63 - __builtin_clzll(x); }

static int bm_make_plan(uint64_t capacity, uint64_t block_size, uint64_t first_fit, bm_plan_t *P)
{
    if (capacity == 0 || block_size == 0 || capacity < block_size || first_fit > 1) return 0;
    uint64_t n = capacity / block_size;
    if (n > BM_MAX_BLOCKS) return 0;
    memset(P, 0, sizeof *P);
    P->h.block_size = block_size;
    P->h.nblocks = n;
    P->h.nwords = (n + 63) >> 6;
    uint32_t bits = block_size == 1 ? 0 : (uint32_t)msb64(block_size - 1) + 1;
    uint32_t wb = 0;
    if (bits) {
        wb = 1;
        while (wb < bits) wb <<= 1;
    }
    P->h.waste_bits = wb;
    P->h.waste_words = (n * wb + 63) >> 6;
    P->h.first_fit = (uint32_t)first_fit;
    P->h.bs_tz = (uint32_t)ctz64(block_size);
    P->h.bs_shift = mp_is_pow2(block_size) ? P->h.bs_tz : 64;
    P->size = BM_MAP_OFF + 8 * (2 * P->h.nwords + P->h.waste_words);
    return 1;
}

/* ---- accessors --------------------------------------------------------------------- */
static inline bm_hdr_t *hdr(void *st) { return (bm_hdr_t *)((char *)st + BM_HDR_OFF); }
static inline const bm_hdr_t *chdr(const void *st)
{
    return (const bm_hdr_t *)((const char *)st + BM_HDR_OFF);
}
static inline uint64_t *usedmap(void *st) { return (uint64_t *)((char *)st + BM_MAP_OFF); }
static inline const uint64_t *cusedmap(const void *st)
{
    return (const uint64_t *)((const char *)st + BM_MAP_OFF);
}
static inline uint64_t *startmap(void *st) { return usedmap(st) + hdr(st)->nwords; }
static inline const uint64_t *cstartmap(const void *st)
{
    return cusedmap(st) + chdr(st)->nwords;
}
static inline uint64_t *wastemap(void *st) { return startmap(st) + hdr(st)->nwords; }
static inline const uint64_t *cwastemap(const void *st)
{
    return cstartmap(st) + chdr(st)->nwords;
}

static inline int bit(const uint64_t *m, uint64_t i) { return (int)((m[i >> 6] >> (i & 63)) & 1); }

static inline uint64_t waste_get(const bm_hdr_t *x, const uint64_t *wm, uint64_t i)
{
    uint32_t wb = x->waste_bits;
    if (!wb) return 0;
    uint64_t b = i * wb;
    uint64_t v = wm[b >> 6] >> (b & 63);
    return wb == 64 ? v : v & (((uint64_t)1 << wb) - 1);
}

static inline void waste_set(const bm_hdr_t *x, uint64_t *wm, uint64_t i, uint64_t v)
{
    uint32_t wb = x->waste_bits;
    if (!wb) return;
    uint64_t b = i * wb;
    if (wb == 64) {
        wm[b >> 6] = v;
        return;
    }
    uint64_t m = (((uint64_t)1 << wb) - 1) << (b & 63);
    wm[b >> 6] = (wm[b >> 6] & ~m) | (v << (b & 63));
}

static inline uint64_t range_mask(uint64_t from, uint64_t n) /* bits [from&63, +n) */
{
    uint64_t m = n >= 64 ? ~0ull : (((uint64_t)1 << n) - 1);
    return m << (from & 63);
}

static void set_bits(uint64_t *m, uint64_t from, uint64_t n)
{
    while (n) {
        uint64_t k = 64 - (from & 63);
        if (k > n) k = n;
        m[from >> 6] |= range_mask(from, k);
        from += k;
        n -= k;
    }
}

static void clear_bits(uint64_t *m, uint64_t from, uint64_t n)
{
    while (n) {
        uint64_t k = 64 - (from & 63);
        if (k > n) k = n;
        m[from >> 6] &= ~range_mask(from, k);
        from += k;
        n -= k;
    }
}

/* The first free block at or after i, or BM_NONE (the padding is used). */
static inline uint64_t next_zero(const bm_hdr_t *x, const uint64_t *used, uint64_t i)
{
    uint64_t wi = i >> 6;
    if (wi >= x->nwords) return BM_NONE;
    uint64_t w = ~used[wi] & (~0ull << (i & 63));
    while (!w) {
        if (++wi >= x->nwords) return BM_NONE;
        w = ~used[wi];
    }
    return (wi << 6) | (uint64_t)ctz64(w);
}

/* The first set bit of m in [i, end), or end (end <= N). */
static inline uint64_t next_one(const uint64_t *m, uint64_t i, uint64_t end)
{
    if (i >= end) return end;
    uint64_t wi = i >> 6;
    uint64_t w = m[wi] & (~0ull << (i & 63));
    while (!w) {
        wi++;
        if ((wi << 6) >= end) return end;
        w = m[wi];
    }
    uint64_t r = (wi << 6) | (uint64_t)ctz64(w);
    return r < end ? r : end;
}

/* Blocks of the live run that starts at i: up to the next free block or run start. */
static inline uint64_t run_len(const bm_hdr_t *x, const uint64_t *used, const uint64_t *start,
                               uint64_t i)
{
    uint64_t N = x->nblocks, j = i + 1;
    if (j >= N) return N - i;
    uint64_t wi = j >> 6;
    uint64_t w = (~used[wi] | start[wi]) & (~0ull << (j & 63));
    while (!w) {
        if (++wi >= x->nwords) return N - i;
        w = ~used[wi] | start[wi];
    }
    uint64_t r = (wi << 6) | (uint64_t)ctz64(w);
    return (r < N ? r : N) - i;
}

static inline uint64_t align_up(uint64_t v, uint64_t step) { return (v + step - 1) & ~(step - 1); }

/* The lowest start i in [from, lim) with i % step == 0 whose n blocks are free. */
static uint64_t search(const bm_hdr_t *x, const uint64_t *used, uint64_t from, uint64_t lim,
                       uint64_t n, uint64_t step)
{
    uint64_t N = x->nblocks;
    if (n > N) return BM_NONE;
    if (lim > N - n + 1) lim = N - n + 1;
    uint64_t i = align_up(from, step);
    while (i < lim) {
        uint64_t f = next_zero(x, used, i);
        if (f >= lim) return BM_NONE;
        if (f > i) {
            i = align_up(f, step);
            continue;
        }
        uint64_t u = next_one(used, i, i + n);
        if (u == i + n) return i;
        i = align_up(u + 1, step);
    }
    return BM_NONE;
}

static inline uint64_t step_of(const bm_hdr_t *x, uint64_t align)
{
    uint32_t a = (uint32_t)ctz64(align);
    return a <= x->bs_tz ? 1 : (uint64_t)1 << (a - x->bs_tz);
}

static inline uint64_t blocks_for(const bm_hdr_t *x, uint64_t size)
{
    if (x->bs_shift < 64)
        return (size >> x->bs_shift) + ((size & (x->block_size - 1)) != 0);
    return size / x->block_size + (size % x->block_size != 0);
}

/* Where alloc puts a run of n blocks. */
static inline uint64_t place(const void *st, uint64_t n, uint64_t step)
{
    const bm_hdr_t *x = chdr(st);
    const uint64_t *used = cusedmap(st);
    if (x->first_fit) return search(x, used, 0, x->nblocks, n, step);
    uint64_t cur = ((const mp_head_t *)st)->cursor;
    uint64_t i = search(x, used, cur, x->nblocks, n, step);
    if (i == BM_NONE && cur) i = search(x, used, 0, cur, n, step);
    return i;
}

/* Hand out blocks [i, i+n) for a request of size bytes. */
static inline void take(void *st, uint64_t i, uint64_t n, uint64_t size)
{
    mp_head_t *h = st;
    bm_hdr_t *x = hdr(st);
    uint64_t *used = usedmap(st);
    mpi_assert(n >= 1 && i + n <= x->nblocks && next_one(used, i, i + n) == i + n);
    if ((i & 63) + n <= 64) used[i >> 6] |= range_mask(i, n);
    else set_bits(used, i, n);
    startmap(st)[i >> 6] |= (uint64_t)1 << (i & 63);
    uint64_t bytes = n * x->block_size;
    waste_set(x, wastemap(st), i, bytes - size);
    mpi_head_on_alloc(h, (i + n) * x->block_size, bytes, size);
    if (!x->first_fit) h->cursor = i + n == x->nblocks ? 0 : i + n;
}

static int bm_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    const bm_hdr_t *x = chdr(st);
    uint64_t n = blocks_for(x, size);
    uint64_t i = place(st, n, step_of(x, align));
    if (i == BM_NONE) return MP_ENOSPACE;
    take(st, i, n, size);
    *out = i * x->block_size;
    return MP_OK;
}

/* The block index of the live run that starts at offset, or BM_NONE. */
static inline uint64_t lookup(const void *st, uint64_t offset)
{
    const bm_hdr_t *x = chdr(st);
    uint64_t i;
    if (x->bs_shift < 64) {
        if (offset & (x->block_size - 1)) return BM_NONE;
        i = offset >> x->bs_shift;
    } else {
        if (offset % x->block_size) return BM_NONE;
        i = offset / x->block_size;
    }
    if (i >= x->nblocks || !bit(cstartmap(st), i)) return BM_NONE;
    return i;
}

static int bm_free(void *st, uint64_t offset)
{
    uint64_t i = lookup(st, offset);
    if (i == BM_NONE) return MP_ENOTALLOC;
    mp_head_t *h = st;
    bm_hdr_t *x = hdr(st);
    uint64_t *used = usedmap(st), *start = startmap(st);
    uint64_t n = run_len(x, used, start, i);
    if ((i & 63) + n <= 64) used[i >> 6] &= ~range_mask(i, n);
    else clear_bits(used, i, n);
    start[i >> 6] &= ~((uint64_t)1 << (i & 63));
    uint64_t bytes = n * x->block_size, w = waste_get(x, wastemap(st), i);
    waste_set(x, wastemap(st), i, 0);
    mpi_head_on_free(h, bytes, bytes - w);
    return MP_OK;
}

static int bm_size_of(const void *st, uint64_t offset, uint64_t *out)
{
    uint64_t i = lookup(st, offset);
    if (i == BM_NONE) return MP_ENOTALLOC;
    const bm_hdr_t *x = chdr(st);
    *out = run_len(x, cusedmap(st), cstartmap(st), i) * x->block_size;
    return MP_OK;
}

static int bm_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    uint64_t i = lookup(st, offset);
    if (i == BM_NONE) return MP_ENOTALLOC;
    mp_head_t *h = st;
    bm_hdr_t *x = hdr(st);
    uint64_t *used = usedmap(st), *start = startmap(st), *wm = wastemap(st);
    uint64_t B = x->block_size, N = x->nblocks;
    uint64_t n0 = run_len(x, used, start, i), n1 = blocks_for(x, size);
    uint64_t old_req = n0 * B - waste_get(x, wm, i);
    *out = offset;
    if (n1 <= n0) { /* same blocks, or the tail goes back */
        if (n1 < n0) clear_bits(used, i + n1, n0 - n1);
        waste_set(x, wm, i, n1 * B - size);
        mpi_head_on_resize(h, (i + n1) * B, n0 * B, n1 * B, old_req, size);
        return MP_OK;
    }
    if (n1 <= N - i && next_one(used, i + n0, i + n1) == i + n1) { /* grow in place */
        set_bits(used, i + n0, n1 - n0);
        waste_set(x, wm, i, n1 * B - size);
        mpi_head_on_resize(h, (i + n1) * B, n0 * B, n1 * B, old_req, size);
        return MP_OK;
    }
    if (n1 > N) return MP_ENOSPACE;
    /* move: free the run, search, and put it back when nothing fits */
    clear_bits(used, i, n0);
    start[i >> 6] &= ~((uint64_t)1 << (i & 63));
    uint64_t j = place(st, n1, step_of(x, align));
    if (j == BM_NONE) {
        set_bits(used, i, n0);
        start[i >> 6] |= (uint64_t)1 << (i & 63);
        return MP_ENOSPACE;
    }
    waste_set(x, wm, i, 0);
    mpi_head_on_free(h, n0 * B, old_req);
    take(st, j, n1, size);
    *out = j * B;
    return MP_OK;
}

static void bm_reset(void *st)
{
    mp_head_t *h = st;
    bm_hdr_t *x = hdr(st);
    uint64_t *used = usedmap(st);
    memset(used, 0, 16 * x->nwords); /* used[] and start[] */
    memset(wastemap(st), 0, 8 * x->waste_words);
    if (x->nblocks & 63) used[x->nwords - 1] = ~0ull << (x->nblocks & 63); /* padding */
    mpi_head_on_reset(h);
    h->cursor = 0;
}

uint64_t mp_bitmap_state_size(uint64_t capacity, uint64_t block_size, int first_fit)
{
    bm_plan_t P;
    return bm_make_plan(capacity, block_size, first_fit ? 1 : 0, &P) ? P.size : 0;
}

int mp_bitmap_init(void *st, uint64_t capacity, uint64_t block_size, int first_fit)
{
    bm_plan_t P;
    if (!bm_make_plan(capacity, block_size, first_fit ? 1 : 0, &P)) return MP_EINVAL;
    memset(st, 0, BM_MAP_OFF);
    mp_head_t *h = st;
    mpi_head_init(h, MP_KIND_BITMAP, P.size, P.h.nblocks * block_size);
    h->param[0] = capacity;
    h->param[1] = block_size;
    h->param[2] = first_fit ? 1 : 0;
    *hdr(st) = P.h;
    bm_reset(st);
    h->peak_used = h->high_water = 0;
    return MP_OK;
}

/* ---- queries ------------------------------------------------------------------------- */
static int bm_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    const bm_hdr_t *x = chdr(st);
    const uint64_t *used = cusedmap(st), *start = cstartmap(st);
    uint64_t N = x->nblocks, B = x->block_size, p = 0;
    while (p < N) {
        int r;
        if (bit(used, p)) {
            uint64_t n = run_len(x, used, start, p);
            r = fn(ctx, p * B, n * B, 1);
            p += n;
        } else {
            uint64_t q = next_one(used, p, N);
            r = fn(ctx, p * B, (q - p) * B, 0);
            p = q;
        }
        if (r) return r;
    }
    return MP_OK;
}

static uint64_t bm_largest(const void *st)
{
    const bm_hdr_t *x = chdr(st);
    const uint64_t *used = cusedmap(st);
    uint64_t best = 0, p = next_zero(x, used, 0);
    while (p < x->nblocks) {
        uint64_t q = next_one(used, p, x->nblocks);
        if (q - p > best) best = q - p;
        p = next_zero(x, used, q);
    }
    return best * x->block_size;
}

static uint64_t bm_free_ranges(const void *st)
{
    const bm_hdr_t *x = chdr(st);
    const uint64_t *used = cusedmap(st);
    uint64_t total = 0, carry = 0;
    for (uint64_t q = 0; q < x->nwords; q++) {
        uint64_t f = ~used[q];
        total += (uint64_t)__builtin_popcountll(f & ~((f << 1) | carry));
        carry = f >> 63;
    }
    return total;
}

static int bm_why_nospace(const void *st, uint64_t size, uint64_t align, char *buf, size_t len)
{
    (void)align; /* any alignment is searched for */
    const bm_hdr_t *x = chdr(st);
    if (blocks_for(x, size) <= x->nblocks) return 0;
    snprintf(buf, len, "larger than the capacity (%llu blocks of %llu bytes)",
             (unsigned long long)x->nblocks, (unsigned long long)x->block_size);
    return 1;
}

/* ---- check ----------------------------------------------------------------------------- */

typedef unsigned long long ull;

static int bm_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    if (len < BM_MAP_OFF) MPI_FAIL("state too short: %llu bytes", (ull)len);
    const mp_head_t *h = st;
    if (h->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", h->magic);
    if (h->kind != MP_KIND_BITMAP) MPI_FAIL("state is of kind %u, not bitmap", h->kind);
    if (h->version != MP_STATE_VERSION) MPI_FAIL("state version %u, expected %u", h->version,
                                                 MP_STATE_VERSION);
    /* M1 */
    bm_plan_t P;
    if (!bm_make_plan(h->param[0], h->param[1], h->param[2], &P))
        MPI_FAIL("bad parameters: capacity %llu, block_size %llu, first_fit %llu",
                 (ull)h->param[0], (ull)h->param[1], (ull)h->param[2]);
    if (h->state_size != P.size || len < P.size)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)h->state_size,
                 (ull)len, (ull)P.size);
    const bm_hdr_t *x = chdr(st);
    if (memcmp(x, &P.h, sizeof P.h) != 0) MPI_FAIL("bitmap header does not match the parameters");
    uint64_t N = x->nblocks, B = x->block_size, NW = x->nwords;
    if (h->capacity != N * B) MPI_FAIL("capacity %llu, parameters give %llu", (ull)h->capacity,
                                       (ull)(N * B));
    if (h->param[3] || h->param[4] || h->param[5]) MPI_FAIL("unused parameters are not zero");
    const uint64_t *used = cusedmap(st), *start = cstartmap(st), *wm = cwastemap(st);
    /* M2 */
    uint64_t pad = (N & 63) ? ~0ull << (N & 63) : 0;
    if ((used[NW - 1] & pad) != pad) MPI_FAIL("used bitmap padding is not all ones");
    if (start[NW - 1] & pad) MPI_FAIL("run-start bitmap has bits beyond the last block");
    if (x->waste_bits) {
        uint64_t b = N * x->waste_bits;
        if ((b & 63) && (wm[b >> 6] >> (b & 63))) MPI_FAIL("waste fields beyond the last block");
    }
    /* M3, M5 counts */
    uint64_t nused = 0, nstart = 0, carry = 0;
    for (uint64_t q = 0; q < NW; q++) {
        uint64_t valid = q == NW - 1 ? ~pad : ~0ull;
        uint64_t u = used[q] & valid;
        if (start[q] & ~used[q]) MPI_FAIL("a run starts at a free block in word %llu", (ull)q);
        uint64_t heads = u & ~((u << 1) | carry);
        if (heads & ~start[q]) MPI_FAIL("block %llu is used but belongs to no run",
                                        (ull)(q * 64 + (uint64_t)ctz64(heads & ~start[q])));
        carry = u >> 63;
        nused += (uint64_t)__builtin_popcountll(u);
        nstart += (uint64_t)__builtin_popcountll(start[q]);
    }
    /* M4 */
    uint64_t waste = 0;
    if (x->waste_bits) {
        uint64_t per = 64 / x->waste_bits;
        for (uint64_t q = 0; q < x->waste_words; q++) {
            if (!wm[q]) continue;
            for (uint64_t f = 0; f < per; f++) {
                uint64_t i = q * per + f;
                if (i >= N) break;
                uint64_t v = waste_get(x, wm, i);
                if (!v) continue;
                if (!bit(start, i)) MPI_FAIL("block %llu: waste recorded but no run starts there",
                                             (ull)i);
                if (v >= B) MPI_FAIL("block %llu: waste %llu not below the block size", (ull)i,
                                     (ull)v);
                waste += v;
            }
        }
    }
    /* M5 */
    if (nstart != h->live) MPI_FAIL("%llu runs, live says %llu", (ull)nstart, (ull)h->live);
    if (nused * B != h->used) MPI_FAIL("%llu blocks used (%llu bytes), used says %llu", (ull)nused,
                                       (ull)(nused * B), (ull)h->used);
    if (h->requested != h->used - waste)
        MPI_FAIL("requested %llu, used %llu minus waste %llu", (ull)h->requested, (ull)h->used,
                 (ull)waste);
    MPI_CHECK_PEAK(h);
    if (h->high_water > h->capacity) MPI_FAIL("high_water beyond capacity");
    for (uint64_t q = NW; q-- > 0;) { /* the end of the highest used block */
        uint64_t u = q == NW - 1 ? used[q] & ~pad : used[q]; /* (not the padding's ones) */
        if (!u) continue;
        uint64_t top = q * 64 + 63 - (uint64_t)__builtin_clzll(u) + 1;
        if (h->high_water < top * B)
            MPI_FAIL("a used block ends at %llu, above high_water %llu", (ull)(top * B),
                     (ull)h->high_water);
        break;
    }
    if (h->cursor >= N || (x->first_fit && h->cursor))
        MPI_FAIL("cursor %llu out of range", (ull)h->cursor);
    return MP_OK;
}

/* The operation table (MP_DEBUG builds check the state after every change: internal.h). */
MPI_OPS_TABLE(bitmap,
    .name = "bitmap",
    .kind = MP_KIND_BITMAP,
    .alloc = bm_alloc,
    .free = bm_free,
    .realloc = bm_realloc,
    .size_of = bm_size_of,
    .reset = bm_reset,
    .check = bm_check,
    .walk = bm_walk,
    .largest_free = bm_largest,
    .available = mpi_head_available,
    .free_ranges = bm_free_ranges,
    .why_nospace = bm_why_nospace);
