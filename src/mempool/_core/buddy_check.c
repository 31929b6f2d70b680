/*
 * buddy_check.c -- check() of the buddy allocator: verifies every invariant (B1-B6,
 * listed in buddy.h) of a state that may come from a file, a segment or a snapshot,
 * so it trusts nothing: every index is bounds checked before it is followed.
 */
#include <stdio.h>
#include <string.h>

#include "buddy.h"

/* ---- check ----------------------------------------------------------------------------- */

typedef unsigned long long ull;

int mpi_buddy_check(const void *st, uint64_t len, char *msg, size_t msglen)
{
    if (len < BD_CLS_OFF) MPI_FAIL("state too short: %llu bytes", (ull)len);
    const mp_head_t *h = st;
    if (h->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", h->magic);
    if (h->kind != MP_KIND_BUDDY) MPI_FAIL("state is of kind %u, not buddy", h->kind);
    if (h->version != MP_STATE_VERSION) MPI_FAIL("state version %u, expected %u", h->version,
                                                 MP_STATE_VERSION);
    /* B1 */
    bd_plan_t P;
    if (!mpi_buddy_make_plan(h->param[0], h->param[1], h->param[2], h->param[3], &P) ||
        P.max_block != h->param[2])
        MPI_FAIL("bad parameters: capacity %llu, min_block %llu, max_block %llu, fanout %llu",
                 (ull)h->param[0], (ull)h->param[1], (ull)h->param[2], (ull)h->param[3]);
    if (h->state_size != P.size || len < P.size)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu", (ull)h->state_size,
                 (ull)len, (ull)P.size);
    if (h->capacity != P.usable) MPI_FAIL("capacity %llu, parameters give %llu",
                                          (ull)h->capacity, (ull)P.usable);
    if (h->cursor || h->param[4] || h->param[5]) MPI_FAIL("unused head fields are not zero");
    const bd_hdr_t *x = chdr(st);
    if (x->min_shift != P.min_shift || x->fan_shift != P.fan_shift ||
        x->nclasses != P.nclasses || x->nslots != P.nslots || x->nwords != P.nwords ||
        x->words_off != P.words_off || x->req_off != P.req_off || x->tag_off != P.tag_off ||
        x->pad)
        MPI_FAIL("buddy header does not match the parameters");
    const bd_class_t *C = ccls(st);
    uint32_t K = P.nclasses, fs = P.fan_shift;
    for (uint32_t k = 0; k < K; k++)
        if (memcmp(&C[k], &P.cls[k], sizeof C[k]) != 0)
            MPI_FAIL("class %u table does not match the parameters", k);
    /* B2 */
    const uint64_t *w = cwords(st);
    uint64_t total = 0, nonempty = 0;
    for (uint32_t k = 0; k < K; k++) {
        const bd_class_t *c = &C[k];
        uint64_t nb = c->nbits, cnt = 0;
        for (uint32_t l = 0; l < c->nlevels; l++) {
            uint64_t nw = words_for(nb);
            const uint64_t *lv = w + c->lvl[l];
            for (uint64_t q = 0; q < nw; q++) {
                uint64_t valid = (q + 1) * 64 <= nb ? ~0ull : range_mask(0, nb - q * 64);
                if (lv[q] & ~valid) MPI_FAIL("class %u level %u: bits beyond the end", k, l);
                if (l == 0) cnt += (uint64_t)__builtin_popcountll(lv[q]);
                if (l + 1 < c->nlevels) {
                    const uint64_t *up = w + c->lvl[l + 1];
                    int bit = (int)((up[q >> 6] >> (q & 63)) & 1);
                    if (bit != (lv[q] != 0))
                        MPI_FAIL("class %u level %u: summary bit of word %llu is wrong", k, l + 1,
                                 (ull)q);
                }
            }
            nb = nw;
        }
        total += cnt;
        if (cnt) nonempty |= (uint64_t)1 << k;
    }
    /* B6: the pending chain */
    const uint8_t *t = ctags(st);
    uint64_t cmask = 0, ccount = 0;
    if (!x->chain_top) {
        if (x->chain_k0 || x->chain_slot || x->chain_prev)
            MPI_FAIL("no pending chain, but its record is not zero");
    } else {
        uint32_t k0 = x->chain_k0, top = x->chain_top;
        uint64_t slot = x->chain_slot;
        if (k0 >= top || top >= K) MPI_FAIL("pending chain classes %u..%u", k0, top);
        if ((slot & (((uint64_t)1 << cshift(x, top)) - 1)) ||
            (slot >> cshift(x, top)) >= C[top].nbits)
            MPI_FAIL("pending chain at slot %llu is not a class %u block", (ull)slot, top);
        if (t[slot] != k0 + 1) MPI_FAIL("the bottom of the pending chain is not allocated");
        cmask = chain_mask(k0, top);
        ccount = (uint64_t)(top - k0) * (((uint64_t)1 << fs) - 1);
        if (x->chain_prev != (nonempty & cmask))
            MPI_FAIL("pending chain: classes before it 0x%llx, bitmaps say 0x%llx",
                     (ull)x->chain_prev, (ull)(nonempty & cmask));
    }
    if (total + ccount != x->nfree) MPI_FAIL("%llu free blocks, count says %llu",
                                             (ull)(total + ccount), (ull)x->nfree);
    if ((nonempty | cmask) != x->nonempty)
        MPI_FAIL("non-empty classes bitmap 0x%llx, expected 0x%llx", (ull)x->nonempty,
                 (ull)(nonempty | cmask));
    /* B4 */
    uint64_t f = (uint64_t)1 << fs;
    for (uint32_t k = 0; k + 1 < K; k++) {
        const bd_class_t *c = &C[k];
        for (uint64_t g = 0; g + f <= c->nbits; g += f)
            if (hb_count_range(w, c, g, f) == f)
                MPI_FAIL("class %u: the %llu buddies at block %llu are free but not merged", k,
                         (ull)f, (ull)g);
    }
    /* B3, B5: the tiling */
    const uint64_t *rq = creqs(st);
    uint64_t j = 0, blocks = 0, live = 0, used = 0, requested = 0, maxend = 0;
    while (j < P.nslots) {
        uint32_t k;
        if (t[j]) {
            if (t[j] > K) MPI_FAIL("slot %llu: tag %u beyond %u classes", (ull)j, t[j], K);
            k = t[j] - 1u;
            if (rq[j] == 0 || rq[j] > csize(x, k))
                MPI_FAIL("block at slot %llu: %llu bytes asked for a class of %llu", (ull)j,
                         (ull)rq[j], (ull)csize(x, k));
            if ((j >> cshift(x, k)) >= C[k].nbits || (j & (((uint64_t)1 << cshift(x, k)) - 1)))
                MPI_FAIL("allocated block at slot %llu: class %u is misplaced", (ull)j, k);
            if (hb_test(w, &C[k], j >> cshift(x, k)))
                MPI_FAIL("block at slot %llu is both allocated and free", (ull)j);
            live++;
            used += csize(x, k);
            requested += rq[j];
            maxend = (j << x->min_shift) + csize(x, k);
        } else {
            if (rq[j]) MPI_FAIL("slot %llu: a request without a block", (ull)j);
            int fk = mpi_buddy_free_class_at(st, j);
            if (fk < 0) MPI_FAIL("slot %llu is neither allocated nor in a free block", (ull)j);
            k = (uint32_t)fk;
            blocks++;
        }
        uint64_t span = (uint64_t)1 << cshift(x, k);
        for (uint64_t s = j + 1; s < j + span; s++)
            if (t[s] || rq[s]) MPI_FAIL("slot %llu inside the block at slot %llu is tagged",
                                        (ull)s, (ull)j);
        j += span;
    }
    if (blocks != total + ccount)
        MPI_FAIL("%llu free blocks tile the span, the bitmaps and the chain hold %llu",
                 (ull)blocks, (ull)(total + ccount));
    if (live != h->live) MPI_FAIL("%llu live blocks, count says %llu", (ull)live, (ull)h->live);
    if (used != h->used || requested != h->requested)
        MPI_FAIL("live blocks hold %llu bytes (%llu asked for), head says %llu (%llu)", (ull)used,
                 (ull)requested, (ull)h->used, (ull)h->requested);
    MPI_CHECK_PEAK(h);
    if (h->high_water > h->capacity) MPI_FAIL("high_water beyond capacity");
    if (h->high_water < maxend)
        MPI_FAIL("a live block ends at %llu, above high_water %llu", (ull)maxend,
                 (ull)h->high_water);
    /* the pad bytes after the tags */
    for (uint64_t s = P.nslots; s < ((P.nslots + 7) & ~(uint64_t)7); s++)
        if (t[s]) MPI_FAIL("tag padding is not zero");
    return MP_OK;
}
