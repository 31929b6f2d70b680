/*
 * heap_check.c -- the Heap's memory map and its state check, apart from the
 * strategy in heap.c (layout and accessors: heap.h).
 *
 * The walk: segments() (mpi_heap_walk), free_ranges (mpi_heap_free_ranges) and
 * largest_free (mpi_heap_largest_free, only while a spare page exists) go through
 * the TLSF's ranges in address order and open the pages among them.
 * The check (mpi_heap_check) verifies the invariants H1..H5 listed at the top of
 * heap.c, after the TLSF sub-state's own check.
 */
#include <stdio.h>
#include <string.h>

#include "heap.h"

/* ---- walking the memory map ------------------------------------------------------- */
/* Pieces go through w_piece() in address order, which merges adjacent free pieces. */
typedef struct walker {
    const void *st;
    mp_walk_fn fn; /* NULL: only count */
    void *ctx;
    uint64_t free_off, free_len; /* the pending free piece */
    uint64_t nfree_ranges;
    int stop;
    int runs_only; /* largest_free: only the runs below, no pieces */
    /* for largest_free: runs of free TLSF ranges and spare pages */
    uint64_t run_off, run_len, best_run;
} walker_t;

static void w_flush(walker_t *w)
{
    if (w->free_len) {
        w->nfree_ranges++;
        if (w->fn && !w->stop) w->stop = w->fn(w->ctx, w->free_off, w->free_len, 0);
        w->free_len = 0;
    }
}

static void w_piece(walker_t *w, uint64_t off, uint64_t len, int allocated)
{
    if (w->stop || len == 0) return;
    if (!allocated) {
        if (w->free_len && w->free_off + w->free_len == off) w->free_len += len;
        else {
            w_flush(w);
            w->free_off = off;
            w->free_len = len;
        }
        return;
    }
    w_flush(w);
    if (w->fn && !w->stop) w->stop = w->fn(w->ctx, off, len, 1);
}

/* a slab page: runs of free items (and the slack after the last item) as free
 * pieces, live items one by one */
static void walk_slab_page(walker_t *w, const heap_ctl_t *c, uint32_t p, uint32_t k)
{
    const uint64_t *r = CREC(w->st, c, p);
    uint64_t base = page_base(w->st, c, p), sz = c->cls[k].size;
    uint32_t count = c->cls[k].count;
    for (uint32_t i = 0; i < count && !w->stop;) {
        uint64_t word = r[REC_HDR + (i >> 6)] >> (i & 63);
        uint32_t left = 64 - (i & 63);
        if (left > count - i) left = count - i;
        if (word & 1) { /* live items */
            uint64_t inv = ~word;
            uint32_t run = inv ? (uint32_t)__builtin_ctzll(inv) : 64;
            if (run > left) run = left;
            if (w->fn) {
                for (uint32_t j = 0; j < run && !w->stop; j++)
                    w_piece(w, base + (i + j) * sz, sz, 1);
            } else {
                w_piece(w, base + i * sz, sz * run, 1);
            }
            i += run;
        } else {
            uint32_t run = word ? (uint32_t)__builtin_ctzll(word) : 64;
            if (run > left) run = left;
            w_piece(w, base + i * sz, sz * run, 0);
            i += run;
        }
    }
    w_piece(w, base + count * sz, ((uint64_t)1 << c->page_shift) - count * sz, 0);
}

static void walk_frag_page(walker_t *w, const heap_ctl_t *c, uint32_t p)
{
    const uint64_t *r = CREC(w->st, c, p);
    uint64_t base = page_base(w->st, c, p), pad = frag_pad(c);
    uint32_t lim = c->nfrags < GROUP_FRAGS ? c->nfrags : GROUP_FRAGS;
    for (uint32_t g = 0; g < c->groups && !w->stop; g++) {
        uint64_t used = r[REC_HDR + g], start = r[REC_HDR + c->groups + g];
        uint64_t gbase = base + (uint64_t)g * GROUP_FRAGS * FRAG;
        for (uint32_t b = 0; b < lim && !w->stop;) {
            uint64_t from = (~0ull << b) << 1;
            uint64_t stop = (start & 1ull << b) ? (start | ~used | pad) & from : start & from;
            uint32_t e = stop ? (uint32_t)__builtin_ctzll(stop) : 64;
            if (e > lim) e = lim;
            w_piece(w, gbase + (uint64_t)b * FRAG, (uint64_t)(e - b) * FRAG,
                    (int)((start >> b) & 1));
            b = e;
        }
    }
}

static void run_piece(walker_t *w, uint64_t off, uint64_t len, int free_or_spare)
{
    if (!free_or_spare) {
        w->run_len = 0;
        return;
    }
    if (w->run_len && w->run_off + w->run_len == off) w->run_len += len;
    else {
        w->run_off = off;
        w->run_len = len;
    }
    if (w->run_len > w->best_run) w->best_run = w->run_len;
}

/* The page (slot) a TLSF range is, or MP_NIL when it is not a page. */
static inline uint32_t range_page(const void *st, const heap_ctl_t *c, uint64_t off,
                                  uint64_t size, uint32_t *owner)
{
    uint64_t s = off >> c->page_shift, psz = (uint64_t)1 << c->page_shift;
    if (size != psz || s >= c->npages) return MP_NIL;
    uint32_t e = CPT(st, c)[s];
    if (!e || e_start(e) != (off & (psz - 1))) return MP_NIL;
    *owner = e_owner(e);
    return (uint32_t)s;
}

static int walk_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    walker_t *w = ctx;
    const heap_ctl_t *c = CCT(w->st);
    uint32_t owner = 0, p = allocated ? range_page(w->st, c, off, size, &owner) : MP_NIL;
    if (w->runs_only) {
        run_piece(w, off, size, !allocated || (p != MP_NIL && c->spare == p));
        return 0;
    }
    if (p != MP_NIL && owner <= FRAG_OWNER) {
        if (owner <= NCLASS) walk_slab_page(w, c, p, owner);
        else walk_frag_page(w, c, p);
        run_piece(w, off, size, c->spare == p);
    } else {
        w_piece(w, off, size, allocated);
        run_piece(w, off, size, !allocated);
    }
    return w->stop;
}

static void walk_all(walker_t *w)
{
    TLSF_OPS.walk(CSUB(w->st, CCT(w->st)), walk_cb, w);
    w_flush(w);
}

int mpi_heap_walk(const void *st, mp_walk_fn fn, void *ctx)
{
    walker_t w;
    memset(&w, 0, sizeof w);
    w.st = st;
    w.fn = fn;
    w.ctx = ctx;
    walk_all(&w);
    return w.stop;
}

uint64_t mpi_heap_free_ranges(const void *st)
{
    walker_t w;
    memset(&w, 0, sizeof w);
    w.st = st;
    walk_all(&w);
    return w.nfree_ranges;
}

/* The largest alloc(size) that succeeds: the largest free TLSF range (a spare
 * page counts as free, merged with its free neighbours: an allocation that needs
 * the room releases the spares), the largest class with a free item in a partial
 * page, or the longest free fragment run. */
uint64_t mpi_heap_largest_free(const void *st)
{
    const heap_ctl_t *c = CCT(st);
    uint64_t best;
    if (have_spares(c)) {
        walker_t w;
        memset(&w, 0, sizeof w);
        w.st = st;
        w.runs_only = 1;
        walk_all(&w);
        best = w.best_run;
    } else {
        best = TLSF_OPS.largest_free(CSUB(st, c));
    }
    for (uint32_t k = NCLASS; k >= 1; k--)
        if (c->cls[k].head != MP_NIL) {
            if (c->cls[k].size > best) best = c->cls[k].size;
            break;
        }
    if (c->fbits) {
        uint64_t f = (uint64_t)(31 - __builtin_clz(c->fbits)) * FRAG;
        if (f > best) best = f;
    }
    return best;
}

/* ---- check ----------------------------------------------------------------------------- */

typedef unsigned long long ull;

typedef struct checker {
    const void *st;
    uint64_t pages_seen, direct_live, direct_used, max_end;
} checker_t;

static int check_cb(void *ctx, uint64_t off, uint64_t size, int allocated)
{
    checker_t *k = ctx;
    if (!allocated) return 0;
    uint32_t owner, p = range_page(k->st, CCT(k->st), off, size, &owner);
    /* the spare holds nothing handed out: a failed alloc_many that took it is
     * undone by restoring the head, high_water included */
    if (p != CCT(k->st)->spare && off + size > k->max_end) k->max_end = off + size;
    if (p != MP_NIL) {
        k->pages_seen++;
    } else {
        k->direct_live++;
        k->direct_used += size;
    }
    return 0;
}

static int check_layout(const void *st, uint64_t len, char *msg, size_t msglen, layout_t *L)
{
    const mp_head_t *h = st;
    if (len < CTL_OFF + sizeof(heap_ctl_t)) MPI_FAIL("state too short: %llu bytes", (ull)len);
    if (h->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", h->magic);
    if (h->kind != MP_KIND_HEAP) MPI_FAIL("state is of kind %u, not %u", h->kind, MP_KIND_HEAP);
    if (h->version != MP_STATE_VERSION) MPI_FAIL("state version %u, expected %u", h->version,
                                                 MP_STATE_VERSION);
    if (!mpi_heap_layout(h->capacity, h->param[0], h->param[1], L))
        MPI_FAIL("bad parameters: capacity %llu, page_size %llu, max_blocks %llu", (ull)h->capacity,
                 (ull)h->param[0], (ull)h->param[1]);
    if (h->state_size != L->total || len < L->total)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)h->state_size,
                 (ull)len, (ull)L->total);
    if (h->param[MP_PARAM_FIXED] > 1)
        MPI_FAIL("fixed-budget flag is %llu, not 0 or 1", (ull)h->param[MP_PARAM_FIXED]);
    const heap_ctl_t *c = CCT(st);
    if (c->page_shift != L->page_shift || c->npages != L->npages ||
        c->rec_words != L->rec_words || c->bm_words != L->bm_words || c->groups != L->groups ||
        c->nfrags != L->nfrags || c->frag_max_n != L->frag_max_n || c->pt_off != L->pt_off ||
        c->rec_off != L->rec_off || c->waste_off != L->waste_off || c->tlsf_off != L->tlsf_off ||
        c->tlsf_size != L->tlsf_size)
        MPI_FAIL("heap layout does not match the parameters");
    for (uint32_t k = 1; k <= NCLASS; k++)
        if (c->cls[k].size != 16 * k || c->cls[k].count != (uint32_t)(h->param[0] / (16 * k)))
            MPI_FAIL("class %u: size %u, count %u do not match the page size", k, c->cls[k].size,
                     c->cls[k].count);
    const mp_head_t *sub = CSUB(st, c);
    if (sub->magic != MP_STATE_MAGIC || sub->kind != MP_KIND_TLSF ||
        sub->capacity != h->capacity || sub->param[0] != h->param[1] ||
        sub->state_size != L->tlsf_size)
        MPI_FAIL("TLSF sub-state head does not match the heap (capacity %llu, max_blocks %llu)",
                 (ull)sub->capacity, (ull)sub->param[0]);
    return MP_OK;
}

/* Walk a page list (bounded); every page must belong to `owner`, be partial and,
 * for a fragment bucket, have that longest run.  Returns the length, or -1 with
 * msg set. */
static int64_t check_list(const void *st, const heap_ctl_t *c, uint32_t head, uint32_t owner,
                          uint32_t bucket, char *msg, size_t msglen)
{
    const uint32_t *pt = CPT(st, c);
    uint32_t prev = MP_NIL;
    int64_t n = 0;
    for (uint32_t p = head; p != MP_NIL;) {
        if (p >= c->npages) {
            snprintf(msg, msglen, "list of owner %u links page %u beyond %u", owner, p,
                     c->npages);
            return -1;
        }
        if (++n > (int64_t)c->npages) {
            snprintf(msg, msglen, "list of owner %u is longer than the pages (cycle?)", owner);
            return -1;
        }
        const uint64_t *r = CREC(st, c, p);
        if (e_owner(pt[p]) != owner) {
            snprintf(msg, msglen, "list of owner %u holds page %u of owner %u", owner, p,
                     e_owner(pt[p]));
            return -1;
        }
        if (r_prev(r) != prev) {
            snprintf(msg, msglen, "list of owner %u: bad prev link at page %u", owner, p);
            return -1;
        }
        uint32_t nfree = r_nfree(r);
        uint32_t full = owner <= NCLASS ? c->cls[owner].count : c->nfrags;
        if (nfree == 0 || nfree >= full) {
            snprintf(msg, msglen, "list of owner %u holds page %u with %u of %u free", owner, p,
                     nfree, full);
            return -1;
        }
        if (bucket && r_maxrun(r) != bucket) {
            snprintf(msg, msglen, "fragment bucket %u holds page %u whose longest run is %u",
                     bucket, p, r_maxrun(r));
            return -1;
        }
        prev = p;
        p = r_next(r);
    }
    return n;
}

static int check_slab_page(const void *st, const heap_ctl_t *c, uint32_t p, uint32_t k,
                           uint64_t *live, uint64_t *used, uint64_t *wasted, char *msg,
                           size_t msglen)
{
    const uint64_t *r = CREC(st, c, p);
    const uint8_t *waste = CWASTE(st, c);
    uint64_t base = page_base(st, c, p);
    uint32_t count = c->cls[k].count, nw = (count + 63) / 64;
    uint64_t sz = c->cls[k].size, summary = 0, alloc = 0;
    if (r_maxrun(r)) MPI_FAIL("slab page %u has a run length", p);
    for (uint32_t j = 0; j < c->bm_words; j++) {
        uint64_t word = r[REC_HDR + j];
        if (j >= nw) {
            if (word) MPI_FAIL("slab page %u: bitmap word %u beyond the items", p, j);
            continue;
        }
        uint32_t valid = j == nw - 1 && (count & 63) ? count & 63 : 64;
        uint64_t pad = valid == 64 ? 0 : ~0ull << valid;
        if ((word & pad) != pad) MPI_FAIL("slab page %u: padding bits of word %u clear", p, j);
        uint64_t items = word & ~pad;
        alloc += (uint64_t)__builtin_popcountll(items);
        if (word != ~0ull) summary |= (uint64_t)1 << j;
        for (uint64_t m = items; m; m &= m - 1) {
            uint32_t i = j * 64 + (uint32_t)__builtin_ctzll(m);
            uint8_t ws = waste[(base + i * sz) >> 4];
            if (ws >= sz)
                MPI_FAIL("slab item at %llu wastes %u of %llu bytes", (ull)(base + i * sz), ws,
                         (ull)sz);
            *wasted += ws;
        }
    }
    if (r[2] != summary)
        MPI_FAIL("slab page %u: summary 0x%llx, bitmap says 0x%llx", p, (ull)r[2], (ull)summary);
    if (r_nfree(r) != count - alloc)
        MPI_FAIL("slab page %u: %u free, bitmap says %llu", p, r_nfree(r), (ull)(count - alloc));
    *live += alloc;
    *used += alloc * sz;
    return MP_OK;
}

static int check_frag_page(const void *st, const heap_ctl_t *c, uint32_t p, uint64_t *live,
                           uint64_t *used, uint64_t *wasted, char *msg, size_t msglen)
{
    const uint64_t *r = CREC(st, c, p);
    const uint8_t *waste = CWASTE(st, c);
    uint64_t base = page_base(st, c, p), pad = frag_pad(c), freen = 0;
    if (r[2]) MPI_FAIL("fragment page %u has a summary", p);
    for (uint32_t j = 2 * c->groups; j < c->bm_words; j++)
        if (r[REC_HDR + j]) MPI_FAIL("fragment page %u: bitmap word %u is not zero", p, j);
    for (uint32_t g = 0; g < c->groups; g++) {
        uint64_t u = r[REC_HDR + g], s = r[REC_HDR + c->groups + g];
        if ((u & pad) != pad) MPI_FAIL("fragment page %u: padding bits clear", p);
        if (s & pad) MPI_FAIL("fragment page %u: a run starts in the padding", p);
        if (s & ~u) MPI_FAIL("fragment page %u: a run starts on a free fragment", p);
        /* an allocated fragment after a free one (or first) must start a run */
        if ((u & ~pad) & ~(u << 1) & ~s)
            MPI_FAIL("fragment page %u: allocated fragments without a start", p);
        freen += (uint64_t)__builtin_popcountll(~u);
        for (uint64_t m = s; m; m &= m - 1) {
            uint32_t b = (uint32_t)__builtin_ctzll(m);
            uint64_t stop = (s | ~u | pad) & ((~0ull << b) << 1);
            uint32_t e = stop ? (uint32_t)__builtin_ctzll(stop) : 64;
            uint64_t off = base + ((uint64_t)g * GROUP_FRAGS + b) * FRAG;
            uint64_t sz = (uint64_t)(e - b) * FRAG;
            if (e - b > c->frag_max_n)
                MPI_FAIL("fragment run at %llu is %u fragments long", (ull)off, e - b);
            uint8_t ws = waste[off >> 4];
            if (ws >= sz) MPI_FAIL("fragment run at %llu wastes %u of %llu bytes", (ull)off, ws,
                                   (ull)sz);
            *wasted += ws;
            (*live)++;
            *used += sz;
        }
    }
    if (r_nfree(r) != freen)
        MPI_FAIL("fragment page %u: %u free, bitmap says %llu", p, r_nfree(r), (ull)freen);
    uint32_t want = freen == c->nfrags ? c->frag_max_n : page_maxrun(c, r);
    if (r_maxrun(r) != want)
        MPI_FAIL("fragment page %u: longest run %u, bitmap says %u", p, r_maxrun(r), want);
    return MP_OK;
}

int mpi_heap_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    layout_t L;
    int rc = check_layout(st, len, msg, msglen, &L);
    if (rc) return rc;
    const mp_head_t *h = st;
    const heap_ctl_t *c = CCT(st);
    char sub_msg[200];
    if (TLSF_OPS.check(CSUB(st, c), L.tlsf_size, sub_msg, sizeof sub_msg))
        MPI_FAIL("TLSF sub-state: %s", sub_msg);
    /* the Heap holds its TLSF's ranges by offset (its pages, its large ranges) */
    if (TLSF_OPS.by_handle(CSUB(st, c)))
        MPI_FAIL("TLSF sub-state: a range allocated by handle, which the Heap never makes");
    /* H2: the page table against the TLSF's ranges */
    const uint32_t *pt = CPT(st, c);
    uint64_t owned = 0, psz = (uint64_t)1 << c->page_shift;
    for (uint32_t p = 0; p < c->npages; p++) {
        const uint64_t *r = CREC(st, c, p);
        if (!e_owner(pt[p])) {
            if (pt[p]) MPI_FAIL("page slot %u: start without an owner", p);
            if (r_prev(r) != MP_NIL || r_next(r) != MP_NIL || r[1] || r[2])
                MPI_FAIL("page slot %u belongs to the TLSF but has a live record", p);
            for (uint32_t j = 0; j < c->bm_words; j++)
                if (r[REC_HDR + j])
                    MPI_FAIL("page slot %u belongs to the TLSF but has bitmap bits", p);
            continue;
        }
        if (e_owner(pt[p]) > FRAG_OWNER || (pt[p] & 0xff00))
            MPI_FAIL("page %u has owner %u", p, pt[p] & 0xffff);
        if (r[1] >> 32) MPI_FAIL("page %u: record counts 0x%llx", p, (ull)r[1]);
        uint64_t s0 = e_start(pt[p]);
        if (s0 % page_align(e_owner(pt[p])) || s0 >= psz || ((uint64_t)p << c->page_shift) + s0 + psz > h->capacity)
            MPI_FAIL("page %u starts at %llu past its slot or ends past the span", p, (ull)s0);
        owned++;
    }
    checker_t ck;
    memset(&ck, 0, sizeof ck);
    ck.st = st;
    TLSF_OPS.walk(CSUB(st, c), check_cb, &ck);
    /* every owned page matched a TLSF range exactly once; the TLSF's ranges are
     * disjoint, so no other range overlaps a page */
    if (ck.pages_seen != owned)
        MPI_FAIL("%llu pages owned, but the TLSF holds %llu of them", (ull)owned,
                 (ull)ck.pages_seen);
    if (ck.max_end > h->high_water)
        MPI_FAIL("a range ends at %llu, above high_water %llu", (ull)ck.max_end,
                 (ull)h->high_water);
    if (h->high_water > h->capacity) MPI_FAIL("high_water beyond capacity");
    /* H3: page records */
    uint64_t live = ck.direct_live, used = ck.direct_used, wasted = 0;
    uint64_t partial[FRAG_OWNER + 1] = {0}, empty = 0;
    uint64_t buckets[NMAX + 1] = {0};
    for (uint32_t p = 0; p < c->npages; p++) {
        uint32_t owner = e_owner(pt[p]);
        if (!owner) continue;
        const uint64_t *r = CREC(st, c, p);
        uint32_t full = owner <= NCLASS ? c->cls[owner].count : c->nfrags;
        if (owner <= NCLASS) rc = check_slab_page(st, c, p, owner, &live, &used, &wasted, msg,
                                                  msglen);
        else rc = check_frag_page(st, c, p, &live, &used, &wasted, msg, msglen);
        if (rc) return rc;
        if (r_nfree(r) == full) empty++;
        else if (r_nfree(r)) {
            partial[owner]++;
            if (owner == FRAG_OWNER) buckets[r_maxrun(r)]++;
        }
    }
    /* H4: lists and spares */
    uint32_t spare = c->spare;
    if (spare != MP_NIL) {
        if (spare >= c->npages || !e_owner(pt[spare]))
            MPI_FAIL("the spare is page %u, which is not a page", spare);
        const uint64_t *r = CREC(st, c, spare);
        uint32_t so = e_owner(pt[spare]);
        uint32_t full = so <= NCLASS ? c->cls[so].count : c->nfrags;
        if (r_nfree(r) != full) MPI_FAIL("the spare page %u is not empty", spare);
        if (r_prev(r) != MP_NIL || r_next(r) != MP_NIL)
            MPI_FAIL("the spare page %u is linked", spare);
    }
    if (empty != (spare != MP_NIL))
        MPI_FAIL("%llu empty pages, spare %u", (ull)empty, spare);
    for (uint32_t k = 1; k <= NCLASS; k++) {
        int64_t n = check_list(st, c, c->cls[k].head, k, 0, msg, msglen);
        if (n < 0) return MP_ECORRUPT;
        if ((uint64_t)n != partial[k])
            MPI_FAIL("class %u lists %lld pages, %llu are partial", k, (long long)n,
                     (ull)partial[k]);
    }
    if (c->fbits & ~((((uint32_t)1 << c->frag_max_n) - 1) << 1))
        MPI_FAIL("fragment bucket bits 0x%x beyond %u", c->fbits, c->frag_max_n);
    if (c->fhead[0] != MP_NIL) MPI_FAIL("fragment bucket 0 is not empty");
    for (uint32_t b = 1; b <= NMAX; b++) {
        if (((c->fbits >> b) & 1) != (c->fhead[b] != MP_NIL))
            MPI_FAIL("fragment bucket bit %u disagrees with its list", b);
        int64_t n = check_list(st, c, c->fhead[b], FRAG_OWNER, b, msg, msglen);
        if (n < 0) return MP_ECORRUPT;
        if ((uint64_t)n != buckets[b])
            MPI_FAIL("fragment bucket %u lists %lld pages, %llu belong there", b, (long long)n,
                     (ull)buckets[b]);
    }
    /* H5: counters */
    if (live != h->live) MPI_FAIL("%llu live ranges, count says %llu", (ull)live, (ull)h->live);
    if (used != h->used) MPI_FAIL("live ranges hold %llu bytes, used says %llu", (ull)used,
                                  (ull)h->used);
    if (used - wasted != h->requested)
        MPI_FAIL("live ranges were asked %llu bytes, requested says %llu", (ull)(used - wasted),
                 (ull)h->requested);
    MPI_CHECK_PEAK(h);
    return MP_OK;
}

