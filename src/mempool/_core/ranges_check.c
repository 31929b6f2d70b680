/*
 * ranges_check.c -- check() of the range engine (TLSF, BestFit): verifies invariants
 * 1-7 (listed in ranges.h) of a state that may come from a file, a segment or a
 * snapshot, so it trusts nothing: every index is bounds checked before it is
 * followed and every walk is bounded.  The free index checks itself (fi->check).
 *
 * One out-of-line copy for both strategies: it reads the free index's node size
 * from `fi` instead of having it folded in as a constant, which costs check() a
 * little and the hot paths nothing (they never call it).
 */
#include "ranges.h"

/* ---- check ---------------------------------------------------------------- */
/* Validate the head and the layout against params before touching any table. */
static int rs_check_layout(const void *st, uint64_t state_len, const mp_fidx_t *fi,
                           uint16_t kind, char *msg, size_t msglen)
{
    if (state_len < RS_AREA_OFF + fi->area_size) MPI_FAIL("state too short: %llu bytes",
                                                          (unsigned long long)state_len);
    const mp_head_t *h = (const mp_head_t *)st;
    const mp_rset_t *rs = rs_cset(st);
    if (h->magic != MP_STATE_MAGIC) MPI_FAIL("bad state magic 0x%08x", h->magic);
    if (h->kind != kind) MPI_FAIL("state is of kind %u, not %u", h->kind, kind);
    if (h->version != MP_STATE_VERSION) MPI_FAIL("state version %u, expected %u", h->version,
                                                 MP_STATE_VERSION);
    uint64_t want = mpi_ranges_state_size(fi, h->capacity, h->param[0]);
    if (want == 0) MPI_FAIL("bad parameters: capacity %llu, max_blocks %llu",
                            (unsigned long long)h->capacity, (unsigned long long)h->param[0]);
    if (h->state_size != want || state_len < want)
        MPI_FAIL("state size %llu (buffer %llu), parameters need %llu",
                 (unsigned long long)h->state_size, (unsigned long long)state_len,
                 (unsigned long long)want);
    if (rs->max_blocks != h->param[0] || rs->hash_bits != rs_hash_bits(h->param[0]) ||
        rs->nursery_bits != rs_nursery_bits(rs->hash_bits) ||
        rs->table_off != rs_table_off(fi, h->param[0]) ||
        rs->nursery_off != rs->table_off + ((uint64_t)1 << rs->hash_bits) * sizeof(mp_slot_t))
        MPI_FAIL("node table header does not match parameters");
    if (h->param[MP_PARAM_FIXED] > 1)
        MPI_FAIL("fixed-budget flag is %llu, not 0 or 1", (unsigned long long)h->param[MP_PARAM_FIXED]);
    if (rs->top > rs->max_blocks) MPI_FAIL("node watermark %u beyond %u", rs->top, rs->max_blocks);
    if (rs->nspare > rs->top) MPI_FAIL("spare count %u beyond watermark %u", rs->nspare, rs->top);
    return MP_OK;
}

int mpi_ranges_check(const void *st, uint64_t state_len, const mp_fidx_t *fi, uint16_t kind,
                    char *msg, size_t msglen)
{
    int rc = rs_check_layout(st, state_len, fi, kind, msg, msglen);
    if (rc) return rc;
    const mp_head_t *h = (const mp_head_t *)st;
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, fi);
    const mp_slot_t *t = rs_ctable(st, fi);
    uint32_t top = rs->top;
    /* 5: the spare stack */
    uint32_t nsp = 0;
    for (uint32_t i = rs->spare; i != MP_NIL; i = rs_cnode(fi, nodes, i)->next) {
        if (i >= top) MPI_FAIL("spare node %u beyond watermark %u", i, top);
        if (rs_cnode(fi, nodes, i)->flags != 0) MPI_FAIL("spare node %u is marked in use", i);
        if (++nsp > rs->nspare) MPI_FAIL("spare stack longer than %u (cycle?)", rs->nspare);
    }
    if (nsp != rs->nspare) MPI_FAIL("spare stack has %u nodes, count says %u", nsp, rs->nspare);
    /* 4: the table holds only allocated nodes (before any lookup follows it) */
    uint64_t entries = 0, slots = (uint64_t)1 << rs->hash_bits;
    for (uint64_t s = 0; s < slots; s++) {
        uint32_t i = t[s].node;
        if (i == MP_NIL) continue;
        if (i >= top || rs_cnode(fi, nodes, i)->flags != RN_INUSE)
            MPI_FAIL("offset table slot %llu holds node %u, which is not allocated by offset",
                     (unsigned long long)s, i);
        if (t[s].tag != rs_tag(rs_cnode(fi, nodes, i)->offset))
            MPI_FAIL("offset table slot %llu: tag does not match node %u", (unsigned long long)s,
                     i);
        entries++;
    }
    /* 4: so does the nursery, each entry in its own slot (lookups look nowhere else) */
    uint32_t nbits = rs->nursery_bits;
    const mp_slot_t *ns = rs_cnursery(st, fi);
    for (uint64_t n = 0; n < ((uint64_t)1 << nbits); n++) {
        uint32_t i = ns[n].node;
        if (i == MP_NIL) continue;
        if (i >= top || rs_cnode(fi, nodes, i)->flags != RN_INUSE)
            MPI_FAIL("nursery slot %llu holds node %u, which is not allocated by offset",
                     (unsigned long long)n, i);
        if (ns[n].tag != rs_tag(rs_cnode(fi, nodes, i)->offset))
            MPI_FAIL("nursery slot %llu: tag does not match node %u", (unsigned long long)n, i);
        if (rs_nhome(ns[n].tag, nbits) != n)
            MPI_FAIL("nursery slot %llu holds node %u, whose slot is %llu", (unsigned long long)n,
                     i, (unsigned long long)rs_nhome(ns[n].tag, nbits));
        entries++;
    }
    /* 1-3: the physical list */
    uint64_t expect = 0, used = 0, live = 0, by_handle = 0, nfree = 0, walked = 0;
    uint32_t prev = MP_NIL;
    int prev_free = 0;
    uint64_t maxend = 0; /* the end of the last live range (address order) */
    for (uint32_t i = rs->first; i != MP_NIL; i = rs_cnode(fi, nodes, i)->next) {
        if (i >= top) MPI_FAIL("node %u beyond watermark %u", i, top);
        if (++walked > (uint64_t)top - nsp) MPI_FAIL("physical list longer than the in-use nodes");
        const mp_rnode_t *n = rs_cnode(fi, nodes, i);
        if (!(n->flags & RN_INUSE)) MPI_FAIL("node %u in the list is not in use", i);
        if (n->prev != prev) MPI_FAIL("node %u: prev link %u, expected %u", i, n->prev, prev);
        if (n->offset != expect) MPI_FAIL("node %u at offset %llu, expected %llu", i,
                                          (unsigned long long)n->offset,
                                          (unsigned long long)expect);
        if (n->size == 0 || n->size > h->capacity - n->offset)
            MPI_FAIL("node %u: size %llu at %llu leaves the span", i, (unsigned long long)n->size,
                     (unsigned long long)n->offset);
        int fr = (n->flags & RN_FREE) != 0;
        if (fr && prev_free) MPI_FAIL("free ranges at %llu and before are not merged",
                                      (unsigned long long)n->offset);
        if (fr) nfree++;
        else {
            live++;
            used += n->size;
            maxend = n->offset + n->size;
            if (n->flags == (RN_INUSE | RN_HANDLE)) {
                by_handle++; /* in no table (the count below says so) */
            } else if (n->flags != RN_INUSE) {
                MPI_FAIL("allocated node %u has flags 0x%x", i, n->flags);
            } else if (rs_lookup(st, fi, n->offset) != i) {
                MPI_FAIL("allocated range at %llu is not in the offset table",
                         (unsigned long long)n->offset);
            }
        }
        expect = n->offset + n->size;
        prev = i;
        prev_free = fr;
    }
    if (expect != h->capacity) MPI_FAIL("ranges end at %llu, capacity is %llu",
                                        (unsigned long long)expect,
                                        (unsigned long long)h->capacity);
    if (walked != (uint64_t)top - nsp) MPI_FAIL("%llu nodes in the list, %u in use",
                                                (unsigned long long)walked, top - nsp);
    if (nfree != rs->nfree) MPI_FAIL("%llu free ranges, count says %u", (unsigned long long)nfree,
                                     rs->nfree);
    if (live != h->live) MPI_FAIL("%llu live ranges, count says %llu", (unsigned long long)live,
                                  (unsigned long long)h->live);
    if (used != h->used || used != h->requested)
        MPI_FAIL("live ranges hold %llu bytes, used says %llu, requested %llu",
                 (unsigned long long)used, (unsigned long long)h->used,
                 (unsigned long long)h->requested);
    MPI_CHECK_PEAK(h);
    if (h->high_water > h->capacity) MPI_FAIL("high_water beyond capacity");
    if (h->high_water < maxend)
        MPI_FAIL("a live range ends at %llu, above high_water %llu", (unsigned long long)maxend,
                 (unsigned long long)h->high_water);
    if (entries != live - by_handle)
        MPI_FAIL("offset table and nursery hold %llu entries for %llu live ranges allocated by "
                 "offset", (unsigned long long)entries, (unsigned long long)(live - by_handle));
    /* 6 */
    return fi->check(st, msg, msglen);
}
