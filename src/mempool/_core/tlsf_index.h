/*
 * tlsf_index.h -- TLSF's free index (its bins, their bitmaps and their upkeep), included
 * by tlsf.c once per layout (no include guard), with:
 *   TI(name)  the layout's prefix for each name below
 *   TI_SLI    log2 of the second-level bins per first level (ranges_bins.h's _n forms)
 *   TI_FL     first levels in the map
 *   TI_BINS   bins (TI_FL << TI_SLI)
 *   TI_SLW    the second-level words' type (as wide as 1 << TI_SLI bits)
 * The full layout (sli 5, every 64-bit size) and the compact one (sli 3, sizes below
 * MP_TLSF_COMPACT_CAP) are the same code with other constants: no branch on the layout
 * inside, and a full state's index is what it always was.
 */

typedef struct TI(index) {
    uint64_t fl;            /* bit fl set <=> sl[fl] != 0                             */
    TI_SLW sl[TI_FL];       /* bit sl of sl[fl] set <=> bin (fl << TI_SLI) + sl non-empty */
    uint32_t bins[TI_BINS]; /* head node of each bin                                  */
} TI(index_t);

static inline TI(index_t) *TI(idx)(void *st) { return (TI(index_t) *)rs_area(st); }
static inline const TI(index_t) *TI(cidx)(const void *st)
{
    return (const TI(index_t) *)rs_carea(st);
}

static const mp_fidx_t TI(fidx);

/* Bin lists change without branches on their neighbours (whether a neighbour
 * exists is data, and a mispredicted branch costs more than a store): a link that
 * would go to a missing neighbour goes to node i itself, whose links are written
 * (bin_link) or dead (bin_unlink) afterwards. */
TLSF_INLINE void TI(bin_link)(TI(index_t) *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t *head = &x->bins[b];
    uint32_t h = *head;
    nodes[rs_sel32(h != MP_NIL, h, i)].link[0] = i;
    nodes[i].link[0] = MP_NIL;
    nodes[i].link[1] = h;
    nodes[i].flags = RN_INUSE | RN_FREE | (b << TLSF_BIN_SHIFT);
    *head = i;
    rs_bin_mark_n(&x->fl, x->sl, b, TI_SLI);
}

TLSF_INLINE void TI(bin_unlink)(TI(index_t) *x, mp_rnode_t *nodes, uint32_t i, unsigned b)
{
    uint32_t p = nodes[i].link[0], q = nodes[i].link[1];
    uint32_t *head = &x->bins[b];
    nodes[rs_sel32(q != MP_NIL, q, i)].link[0] = p;
    nodes[rs_sel32(p != MP_NIL, p, i)].link[1] = q;
    uint32_t h = rs_sel32(p != MP_NIL, *head, q); /* i was the head: q is */
    *head = h;
    rs_bin_unmark_if_n(&x->fl, x->sl, b, h == MP_NIL, TI_SLI);
}

TLSF_INLINE void TI(insert)(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &TI(fidx));
    TI(bin_link)(TI(idx)(st), nodes, i, rs_bin_down_n(nodes[i].size, TI_SLI));
}

TLSF_INLINE void TI(remove)(void *st, uint32_t i)
{
    mp_rnode_t *nodes = rs_nodes(st, &TI(fidx));
    TI(bin_unlink)(TI(idx)(st), nodes, i, bin_of(&nodes[i]));
}

/* A free range's size changed in place: it moves only when its bin changes (a large
 * range that grows or shrinks by a little stays where it is, untouched). */
TLSF_INLINE void TI(rekey)(void *st, uint32_t i, uint64_t old_size)
{
    (void)old_size; /* the old bin is cached */
    mp_rnode_t *nodes = rs_nodes(st, &TI(fidx));
    unsigned b0 = bin_of(&nodes[i]), b = rs_bin_down_n(nodes[i].size, TI_SLI);
    if (b == b0) return;
    TI(index_t) *x = TI(idx)(st);
    TI(bin_unlink)(x, nodes, i, b0);
    TI(bin_link)(x, nodes, i, b);
}

/* (3): every bin from b up to (not including) stop, every range in it. */
static uint32_t TI(scan)(const TI(index_t) *x, const mp_rnode_t *nodes, unsigned b,
                         unsigned stop, uint64_t size, uint64_t align)
{
    while (b < stop && rs_next_bin_n(x->fl, x->sl, &b, TI_SLI) && b < stop) {
        for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1])
            if (fits(&nodes[i], size, align)) return i;
        b++;
    }
    return MP_NIL;
}

TLSF_INLINE uint32_t TI(find)(void *st, uint64_t size, uint64_t align)
{
    const TI(index_t) *x = TI(cidx)(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &TI(fidx));
    unsigned e = (unsigned)(63 - __builtin_clzll(size | (1u << TI_SLI))) - TI_SLI;
    unsigned b0 = (e << TI_SLI) + (unsigned)(size >> e), bu; /* rs_bin_down_n(size) */
    /* a request beyond every bin of a compact index fits no range (a full index's bins
     * cover every size: the test folds away) */
    if (TI_BINS < RS_BINS && b0 >= TI_BINS) return MP_NIL;
    /* (1) the head of the request's own bin */
    uint32_t h = x->bins[b0];
    if (h != MP_NIL && fits(&nodes[h], size, align)) return h;
    /* (2) good fit: every range in a bin at or above need fits */
    uint64_t need = size + (align - 1);
    if (align == 1) { /* rs_bin_up(size): the own bin when size is its lowest */
        bu = b0 + ((size & (((uint64_t)1 << e) - 1)) != 0);
        unsigned b = bu;
        if (bu < TI_BINS && rs_next_bin_n(x->fl, x->sl, &b, TI_SLI)) return x->bins[b];
    } else if (need >= size && rs_bin_up_n(need, &bu, TI_SLI) &&
               (TI_BINS >= RS_BINS || bu < TI_BINS)) {
        unsigned b = bu;
        if (rs_next_bin_n(x->fl, x->sl, &b, TI_SLI)) return x->bins[b];
    } else {
        bu = TI_BINS;
    }
    /* (3) complete search of the bins from the request's own up to the good-fit bin */
    return TI(scan)(x, nodes, b0, bu, size, align);
}

static uint64_t TI(largest)(const void *st)
{
    const TI(index_t) *x = TI(cidx)(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &TI(fidx));
    unsigned b;
    if (!rs_last_bin_n(x->fl, x->sl, &b, TI_SLI)) return 0;
    uint64_t best = 0;
    for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1])
        if (nodes[i].size > best) best = nodes[i].size;
    return best;
}

static void TI(clear)(void *st)
{
    TI(index_t) *x = TI(idx)(st);
    memset(x, 0, TI(fidx).area_size); /* (the padding of a compact index too: check()) */
    memset(x->bins, 0xff, sizeof x->bins);
}

static int TI(fidx_check)(const void *st, char *msg, size_t msglen)
{
    const TI(index_t) *x = TI(cidx)(st);
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, &TI(fidx));
    uint64_t filed = 0;
    int rc = rs_binmap_check_n(x->fl, x->sl, x->bins, TI_FL, TI_SLI, msg, msglen); /* T1, T2 */
    if (rc) return rc;
    /* a compact index's padding (after its bitmaps, at its end) is zero: no byte of the
     * index goes unchecked (the full index has none) */
    const unsigned char *pad = (const unsigned char *)x;
    for (size_t k = offsetof(TI(index_t), sl) + sizeof x->sl; k < offsetof(TI(index_t), bins); k++)
        if (pad[k]) MPI_FAIL("the index's padding byte %zu is 0x%02x", k, pad[k]);
    for (size_t k = offsetof(TI(index_t), bins) + sizeof x->bins; k < TI(fidx).area_size; k++)
        if (pad[k]) MPI_FAIL("the index's padding byte %zu is 0x%02x", k, pad[k]);
    for (unsigned b = 0; b < TI_BINS; b++) {
        uint32_t prev = MP_NIL;
        for (uint32_t i = x->bins[b]; i != MP_NIL; i = nodes[i].link[1]) {
            if (i >= rs->top) MPI_FAIL("bin %u links node %u beyond the watermark", b, i);
            if ((nodes[i].flags & (RN_INUSE | RN_FREE)) != (RN_INUSE | RN_FREE))
                MPI_FAIL("bin %u holds node %u, which is not free", b, i);
            if (nodes[i].flags != (RN_INUSE | RN_FREE | (b << TLSF_BIN_SHIFT)))
                MPI_FAIL("node %u in bin %u has flags 0x%x", i, b, nodes[i].flags);
            if (rs_bin_down_n(nodes[i].size, TI_SLI) != b)
                MPI_FAIL("node %u of size %llu filed in bin %u", i,
                         (unsigned long long)nodes[i].size, b);
            if (nodes[i].link[0] != prev) MPI_FAIL("bin %u: bad prev link at node %u", b, i);
            if (++filed > rs->nfree) MPI_FAIL("bins hold more nodes than free ranges");
            prev = i;
        }
    }
    if (filed != rs->nfree) MPI_FAIL("bins hold %llu nodes for %u free ranges",
                                     (unsigned long long)filed, rs->nfree);
    return MP_OK;
}

static const mp_fidx_t TI(fidx) = {
    .area_size = (sizeof(TI(index_t)) + 7) & ~(size_t)7,
    .node_size = sizeof(mp_rnode_t),
    .insert = TI(insert),
    .remove = TI(remove),
    .rekey = TI(rekey),
    .find = TI(find),
    .largest = TI(largest),
    .clear = TI(clear),
    .check = TI(fidx_check),
};

#undef TI
#undef TI_SLI
#undef TI_FL
#undef TI_BINS
#undef TI_SLW
