/*
 * slab_check.c -- check() of the slab cache: verifies every invariant (S1-S7, listed
 * in slab.h) of a state that may come from a file, a segment or a snapshot, so it
 * trusts nothing: every index is bounds checked before it is followed.
 */
#include <stdio.h>
#include <string.h>

#include "slab.h"

/* ---- check ---------------------------------------------------------------------------------- */
typedef unsigned long long ull;

static int check_slab_page(const void *st, uint64_t p, uint64_t *live, uint64_t *used,
                           uint64_t *asked, uint64_t *items, uint64_t *maxend, char *msg,
                           size_t msglen)
{
    const slab_hdr_t *h = CHD(st);
    const slab_page_t *P = &CPAGES(st)[p];
    const uint32_t *s = CAREA(st, uint32_t, h->off_state) + p * h->per;
    const uint32_t *stack = CAREA(st, uint32_t, h->off_stack) + p * h->per;
    if (P->cursor > h->per || P->used == 0 || P->used > h->per || P->nfree > P->cursor ||
        (uint64_t)P->used + P->nfree != P->cursor)
        MPI_FAIL("slab page %llu: used %u, free %u, cursor %u do not add up (%llu items a page)",
                 (ull)p, P->used, P->nfree, P->cursor, (ull)h->per);
    if (P->items != 0) MPI_FAIL("slab page %llu has an array length", (ull)p);
    if (P->nfree && stack[0] == P->cursor - 1)
        MPI_FAIL("page %llu: the stack's bottom is the last carved item %u (not uncarved)", (ull)p,
                 stack[0]);
    for (uint64_t k = 0; k < h->per; k++) {
        if (k < P->nfree) {
            uint32_t it = stack[k];
            if (it >= P->cursor)
                MPI_FAIL("page %llu: stack slot %llu holds item %u beyond cursor %u", (ull)p,
                         (ull)k, it, P->cursor);
            if (s[it] != (ST_FREE | (uint32_t)k))
                MPI_FAIL("page %llu: stack slot %llu holds item %u, whose state is 0x%08x", (ull)p,
                         (ull)k, it, s[it]);
        } else if (stack[k] != 0) {
            MPI_FAIL("page %llu: stack slot %llu above the top is not 0", (ull)p, (ull)k);
        }
    }
    uint64_t n_items = 0;
    for (uint64_t i = 0; i < h->per; i++) {
        uint32_t v = s[i];
        if (i >= P->cursor) {
            if (v) MPI_FAIL("page %llu: uncarved item %llu has state 0x%08x", (ull)p, (ull)i, v);
            continue;
        }
        uint64_t n;
        uint64_t a;
        switch (v & ST_TAG) {
        case ST_FREE:
            if ((v & ST_LOW) >= P->nfree || stack[v & ST_LOW] != i)
                MPI_FAIL("page %llu: free item %llu is not on the stack", (ull)p, (ull)i);
            continue;
        case 0:
            if (v == 0 || v > h->item_size)
                MPI_FAIL("page %llu: item %llu has state %u (item size %llu)", (ull)p, (ull)i, v,
                         (ull)h->item_size);
            n = 1;
            a = v;
            break;
        case ST_ARRAY:
            n = v & ST_LOW;
            if (n < 2 || n > P->cursor - i)
                MPI_FAIL("page %llu: array of %llu items at item %llu leaves the carved part",
                         (ull)p, (ull)n, (ull)i);
            for (uint64_t j = 1; j < n; j++)
                if (s[i + j] != ST_INNER)
                    MPI_FAIL("page %llu: item %llu inside an array has state 0x%08x", (ull)p,
                             (ull)(i + j), s[i + j]);
            a = n * h->item_size;
            break;
        default:
            MPI_FAIL("page %llu: item %llu is inside no array", (ull)p, (ull)i);
        }
        uint64_t end = item_offset(h, p, i) + n * h->stride;
        if (end > *maxend) *maxend = end;
        n_items += n;
        (*live)++;
        *used += n * h->stride;
        *asked += a;
        i += n - 1;
    }
    if (n_items != P->used)
        MPI_FAIL("page %llu: %llu live items, page says %u", (ull)p, (ull)n_items, P->used);
    *items += n_items;
    return MP_OK;
}

static int zero_items(const void *st, uint64_t p, char *msg, size_t msglen)
{
    const slab_hdr_t *h = CHD(st);
    const uint32_t *s = CAREA(st, uint32_t, h->off_state) + p * h->per;
    const uint32_t *stack = CAREA(st, uint32_t, h->off_stack) + p * h->per;
    for (uint64_t i = 0; i < h->per; i++)
        if (s[i] || stack[i]) MPI_FAIL("page %llu is not a slab page but item %llu has state",
                                       (ull)p, (ull)i);
    return MP_OK;
}

int mpi_slab_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    if (len < OFF_PAGES) MPI_FAIL("state too short: %llu bytes", (ull)len);
    const mp_head_t *m = st;
    if (m->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", m->magic);
    if (m->kind != MP_KIND_SLAB) MPI_FAIL("state is of kind %u, not %u", m->kind, MP_KIND_SLAB);
    if (m->version != MP_STATE_VERSION)
        MPI_FAIL("state version %u, expected %u", m->version, MP_STATE_VERSION);
    slab_hdr_t g;
    uint64_t want;
    char why[160];
    if (mpi_slab_geometry(m->capacity, m->param[0], m->param[1], &g, &want, why, sizeof why))
        MPI_FAIL("bad parameters: %s", why);
    if (m->state_size != want || len < want)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)m->state_size,
                 (ull)len, (ull)want);
    const slab_hdr_t *h = CHD(st);
    if (memcmp(h, &g, offsetof(slab_hdr_t, used_items)) != 0)
        MPI_FAIL("slab geometry in the header does not match the parameters");
    if (h->partial != MP_NIL && h->partial >= h->npages)
        MPI_FAIL("partial list head %u beyond %llu pages", h->partial, (ull)h->npages);
    const slab_page_t *pg = CPAGES(st);
    const uint64_t *bits = CAREA(st, uint64_t, h->off_bitmap);
    /* S2, S3, S4, S5 */
    uint64_t live = 0, used = 0, asked = 0, items = 0, runs = 0, nfree_pages = 0, partial = 0,
             maxend = 0, lo = h->npages;
    for (uint64_t p = 0; p < h->npages; p++) {
        const slab_page_t *P = &pg[p];
        int bit = (bits[p / 64] >> (p % 64)) & 1;
        if (bit != (P->kind == PG_FREE))
            MPI_FAIL("page %llu: pool bit %d but kind %u", (ull)p, bit, P->kind);
        int rc;
        switch (P->kind) {
        case PG_FREE:
            if (P->used || P->nfree || P->cursor || P->items || P->prev != MP_NIL ||
                P->next != MP_NIL)
                MPI_FAIL("free page %llu has a non-empty record", (ull)p);
            if ((rc = zero_items(st, p, msg, msglen))) return rc;
            nfree_pages++;
            if (lo == h->npages) lo = p;
            break;
        case PG_SLAB:
            if ((rc = check_slab_page(st, p, &live, &used, &asked, &items, &maxend, msg, msglen)))
                return rc;
            if (P->used < h->per) {
                partial++;
                if (!in_list(h, pg, (uint32_t)p))
                    MPI_FAIL("page %llu has free items but is not in the partial list", (ull)p);
            } else if (P->prev != MP_NIL || P->next != MP_NIL || h->partial == p) {
                MPI_FAIL("full page %llu is linked in the partial list", (ull)p);
            }
            break;
        case PG_RUN: {
            uint64_t n = P->items;
            if (n <= h->per || n > max_run_items(h))
                MPI_FAIL("page %llu: array of %llu items (a page holds %llu)", (ull)p, (ull)n,
                         (ull)h->per);
            uint64_t k = pages_for(h, n * h->stride);
            if (P->used != k || k > h->npages - p)
                MPI_FAIL("page %llu: array of %llu items spans %u pages, needs %llu", (ull)p,
                         (ull)n, P->used, (ull)k);
            if (P->nfree || P->cursor || P->prev != MP_NIL || P->next != MP_NIL)
                MPI_FAIL("array page %llu has a slab record", (ull)p);
            if ((rc = zero_items(st, p, msg, msglen))) return rc;
            for (uint64_t q = p + 1; q < p + k; q++) {
                const slab_page_t *T = &pg[q];
                if (T->kind != PG_TAIL || T->prev != p || T->used || T->nfree || T->cursor ||
                    T->items || T->next != MP_NIL)
                    MPI_FAIL("page %llu should continue the array at page %llu", (ull)q, (ull)p);
                if ((bits[q / 64] >> (q % 64)) & 1)
                    MPI_FAIL("array page %llu is in the pool", (ull)q);
                if ((rc = zero_items(st, q, msg, msglen))) return rc;
            }
            uint64_t end = p * h->page_size + n * h->stride;
            if (end > maxend) maxend = end;
            live++;
            used += n * h->stride;
            asked += n * h->item_size;
            runs += k;
            p += k - 1;
            break;
        }
        case PG_TAIL:
            MPI_FAIL("page %llu continues no array", (ull)p);
        default:
            MPI_FAIL("page %llu has kind %u", (ull)p, P->kind);
        }
    }
    uint64_t tail_bits = h->npages % 64;
    if (tail_bits && (bits[h->nwords - 1] >> tail_bits))
        MPI_FAIL("pool bitmap has bits beyond page %llu", (ull)h->npages);
    if (nfree_pages != h->free_pages)
        MPI_FAIL("%llu pages in the pool, count says %llu", (ull)nfree_pages, (ull)h->free_pages);
    if (lo != h->page_lo) MPI_FAIL("lowest pool page is %llu, header says %u", (ull)lo, h->page_lo);
    /* S6 */
    uint64_t walked = 0;
    uint32_t prev = MP_NIL;
    for (uint32_t p = h->partial; p != MP_NIL; p = pg[p].next) {
        if (p >= h->npages) MPI_FAIL("partial list links page %u beyond %llu", p, (ull)h->npages);
        if (pg[p].kind != PG_SLAB || pg[p].used >= h->per)
            MPI_FAIL("partial list holds page %u, which has no free item", p);
        if (pg[p].prev != prev) MPI_FAIL("partial list: bad prev link at page %u", p);
        if (++walked > partial) MPI_FAIL("partial list longer than the %llu partial pages (cycle?)",
                                         (ull)partial);
        prev = p;
    }
    if (walked != partial)
        MPI_FAIL("partial list holds %llu pages, %llu have free items", (ull)walked, (ull)partial);
    /* S7 */
    if (items != h->used_items || runs != h->run_pages)
        MPI_FAIL("items %llu / array pages %llu, header says %llu / %llu", (ull)items, (ull)runs,
                 (ull)h->used_items, (ull)h->run_pages);
    if (live != m->live) MPI_FAIL("%llu live ranges, count says %llu", (ull)live, (ull)m->live);
    if (used != m->used || asked != m->requested)
        MPI_FAIL("live ranges hold %llu bytes (%llu asked), head says %llu (%llu)", (ull)used,
                 (ull)asked, (ull)m->used, (ull)m->requested);
    MPI_CHECK_PEAK(m);
    if (m->high_water > m->capacity || m->high_water < maxend)
        MPI_FAIL("high_water %llu: live ranges end at %llu, capacity %llu", (ull)m->high_water,
                 (ull)maxend, (ull)m->capacity);
    uint64_t end = h->off_stack + h->nitems * 4;
    for (uint64_t b = end; b < want; b++)
        if (((const unsigned char *)st)[b]) MPI_FAIL("padding byte %llu is not 0", (ull)b);
    return MP_OK;
}
