/*
 * ranges.c -- the range engine's cold operations (ranges.h): state size, init,
 * reset, realloc and the memory map.  Compiled once for both exact strategies
 * (TLSF, BestFit): the free index is reached through the strategy's table (fi's
 * function pointers, fi->node_size), not folded in as in the hot paths that
 * ranges.h gives each strategy file a copy of.  realloc moves a range with the
 * engine's alloc and free, here too through the table: a few indirect calls on a
 * path that is not hot (2% of the operations of the bundled traces).
 */
#include "ranges.h"

uint64_t mpi_ranges_state_size(const mp_fidx_t *fi, uint64_t capacity, uint64_t max_blocks)
{
    if (capacity == 0 || max_blocks == 0 || max_blocks >= MP_NIL) return 0;
    uint32_t bits = rs_hash_bits(max_blocks);
    uint64_t n = RS_AREA_OFF + fi->area_size + max_blocks * fi->node_size +
                 (((uint64_t)1 << bits) + ((uint64_t)1 << rs_nursery_bits(bits))) *
                     sizeof(mp_slot_t);
    return (n + 7) & ~(uint64_t)7;
}

void mpi_ranges_reset(void *st, const mp_fidx_t *fi)
{
    mp_head_t *h = rs_head(st);
    mp_rset_t *rs = rs_set(st);
    mp_slot_t *t = rs_table(st, fi); /* the nursery follows it */
    /* only the nodes below top were ever touched; clear the table fully */
    uint64_t slots = ((uint64_t)1 << rs->hash_bits) + ((uint64_t)1 << rs->nursery_bits);
    for (uint64_t s = 0; s < slots; s++) {
        t[s].tag = 0;
        t[s].node = MP_NIL;
    }
    mpi_head_on_reset(h);
    h->cursor = 0;
    rs->top = 0;
    rs->spare = MP_NIL;
    rs->nspare = 0;
    fi->clear(st);
    uint32_t i = rs_node_new(st, fi);
    mp_rnode_t *n = rs_node(fi, rs_nodes(st, fi), i);
    n->offset = 0;
    n->size = h->capacity;
    n->prev = n->next = MP_NIL;
    n->flags = RN_INUSE | RN_FREE;
    rs->first = i;
    rs->nfree = 1;
    fi->insert(st, i);
}

int mpi_ranges_init(void *st, const mp_fidx_t *fi, uint16_t kind, uint64_t capacity,
                    uint64_t max_blocks)
{
    uint64_t size = mpi_ranges_state_size(fi, capacity, max_blocks);
    if (size == 0) return MP_EINVAL;
    mp_head_t *h = rs_head(st);
    memset(st, 0, RS_AREA_OFF + fi->area_size);
    mpi_head_init(h, kind, size, capacity);
    h->param[0] = max_blocks;
    mp_rset_t *rs = rs_set(st);
    rs->max_blocks = (uint32_t)max_blocks;
    rs->hash_bits = rs_hash_bits(max_blocks);
    rs->nursery_bits = rs_nursery_bits(rs->hash_bits);
    rs->table_off = rs_table_off(fi, max_blocks);
    rs->nursery_off = rs->table_off + ((uint64_t)1 << rs->hash_bits) * sizeof(mp_slot_t);
    mpi_ranges_reset(st, fi);
    h->peak_used = h->high_water = 0;
    return MP_OK;
}

/* realloc of allocated node i, filed at loc (by offset), or allocated by handle (loc
 * RS_NOT_FOUND): *out is the new offset, or the new node. */
static int realloc_node(void *st, const mp_fidx_t *fi, uint32_t i, int64_t loc, uint64_t size,
                        uint64_t align, uint64_t *out)
{
    int by_handle = loc == RS_NOT_FOUND;
    mp_head_t *h = rs_head(st);
    mp_rset_t *rs = rs_set(st);
    mp_rnode_t *nodes = rs_nodes(st, fi), *I = rs_node(fi, nodes, i);
    uint64_t offset = I->offset, old = I->size;
    uint32_t q = I->next;
    mp_rnode_t *Q = q != MP_NIL ? rs_node(fi, nodes, q) : NULL;
    int qfree = Q && (Q->flags & RN_FREE);
    *out = by_handle ? i : offset;
    if (size == old) return MP_OK;
    if (size < old) { /* shrink: the tail goes back */
        uint64_t delta = old - size;
        if (qfree) { /* the free successor grows down over it */
            uint64_t qold = Q->size;
            Q->offset -= delta;
            Q->size = qold + delta;
            fi->rekey(st, q, qold);
        } else {
            if (rs_spare_count(rs) < 1) return MP_ENONODES;
            rs_new_free(st, fi, rs, nodes, offset + size, delta, i, RS_AFTER);
        }
        I->size = size;
        mpi_head_on_resize(h, offset + size, old, size, old, size);
        return MP_OK;
    }
    uint64_t delta = size - old;
    if (qfree && Q->size >= delta) { /* grow in place */
        uint64_t qold = Q->size;
        if (qold == delta) {
            fi->remove(st, q);
            rs_unlink(st, fi, q);
            rs->nfree--;
        } else {
            Q->offset += delta;
            Q->size = qold - delta;
            fi->rekey(st, q, qold);
        }
        I->size = size;
        mpi_head_on_resize(h, offset + size, old, size, old, size);
        return MP_OK;
    }
    /* move elsewhere: allocate while the old range is still held */
    uint32_t a;
    uint64_t at;
    int rc = rs_alloc_node(st, fi, size, align, by_handle, &a, &at);
    if (rc == MP_OK) {
        if (by_handle) rs_free_node(st, fi, i);
        else rs_free(st, fi, offset);
        *out = by_handle ? a : at;
        return MP_OK;
    }
    /* move down: the free predecessor + this range + a free successor */
    uint32_t p = I->prev;
    if (p == MP_NIL || !(rs_node(fi, nodes, p)->flags & RN_FREE)) return rc;
    uint64_t start = rs_node(fi, nodes, p)->offset;
    uint64_t end = qfree ? Q->offset + Q->size : offset + old;
    uint64_t a0 = rs_align_up(start, align);
    if (a0 < start || a0 > end || end - a0 < size) return rc;
    /* merging releases 1 (+1 with q) node; carving needs up to 2 */
    uint32_t spare = rs_spare_count(rs) + 1 + (uint32_t)qfree;
    if ((uint32_t)((a0 > start) + (a0 + size < end)) > spare) return MP_ENONODES;
    if (!by_handle) rs_loc_remove(st, fi, loc);
    mpi_head_on_free(h, old, old);
    uint32_t f = rs_release(st, fi, i);
    a = rs_carve_as(st, fi, f, a0, size, by_handle);
    *out = by_handle ? a : a0;
    return MP_OK;
}

int mpi_ranges_realloc(void *st, const mp_fidx_t *fi, uint64_t offset, uint64_t size,
                       uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    int64_t loc = rs_find(st, fi, offset);
    if (loc == RS_NOT_FOUND) return MP_ENOTALLOC;
    return realloc_node(st, fi, rs_loc_node(st, fi, loc), loc, size, align, out);
}

int mpi_ranges_realloc_node(void *st, const mp_fidx_t *fi, uint64_t node, uint64_t size,
                            uint64_t align, uint64_t *out)
{
    if (size == 0 || !mp_is_pow2(align)) return MP_EINVAL;
    mpi_assert(node < rs_cset(st)->top &&
               rs_cnode(fi, rs_cnodes(st, fi), (uint32_t)node)->flags == (RN_INUSE | RN_HANDLE));
    return realloc_node(st, fi, (uint32_t)node, RS_NOT_FOUND, size, align, out);
}

uint64_t mpi_ranges_by_handle(const void *st, const mp_fidx_t *fi)
{
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, fi);
    uint64_t n = 0;
    for (uint32_t i = 0; i < rs->top && i < rs->max_blocks; i++)
        n += rs_cnode(fi, nodes, i)->flags == (RN_INUSE | RN_HANDLE);
    return n;
}

int mpi_ranges_walk(const void *st, const mp_fidx_t *fi, mp_walk_fn fn, void *ctx)
{
    const mp_rset_t *rs = rs_cset(st);
    const mp_rnode_t *nodes = rs_cnodes(st, fi);
    uint64_t steps = 0;
    for (uint32_t i = rs->first; i != MP_NIL && steps <= rs->max_blocks; steps++) {
        const mp_rnode_t *n = rs_cnode(fi, nodes, i);
        int r = fn(ctx, n->offset, n->size, !(n->flags & RN_FREE));
        if (r) return r;
        i = n->next;
    }
    return MP_OK;
}

uint64_t mpi_ranges_free_ranges(const void *st) { return rs_cset(st)->nfree; }

/* The nodes never handed out, [top, max_blocks): what snapshots leave out. */
uint64_t mpi_ranges_hole(const void *st, const mp_fidx_t *fi, uint64_t len, uint64_t *off)
{
    if (len < RS_AREA_OFF) return 0;
    const mp_rset_t *rs = rs_cset(st);
    if (rs->top >= rs->max_blocks) return 0;
    *off = RS_AREA_OFF + fi->area_size + (uint64_t)rs->top * fi->node_size;
    return (uint64_t)(rs->max_blocks - rs->top) * fi->node_size;
}

/* ---- growth --------------------------------------------------------------- */
/* The next budget: twice this one, below MP_NIL; 0 when there is none. */
static uint64_t rs_grown_blocks(const mp_rset_t *rs)
{
    uint64_t n = (uint64_t)rs->max_blocks * 2;
    if (n >= MP_NIL) n = MP_NIL - 1;
    return n > rs->max_blocks ? n : 0;
}

uint64_t mpi_ranges_grow_size(const void *st, const mp_fidx_t *fi)
{
    if (((const mp_head_t *)st)->param[MP_PARAM_FIXED]) return 0;
    uint64_t n = rs_grown_blocks(rs_cset(st));
    return n ? mpi_ranges_state_size(fi, ((const mp_head_t *)st)->capacity, n) : 0;
}

/* Head, tables' header, free index and nodes [0, top) are copied as they are (node
 * indices are what the free index and the physical list link by); the hash table is
 * sized for the new budget and every node filed by offset is refiled in it from the old
 * table and nursery (the new nursery starts empty: invariant 4 allows either; nodes
 * allocated by handle are in neither and stay so). */
int mpi_ranges_grow(const void *st, const mp_fidx_t *fi, void *dst, uint64_t dst_len)
{
    const mp_head_t *h = st;
    const mp_rset_t *rs = rs_cset(st);
    uint64_t n = rs_grown_blocks(rs);
    uint64_t size = n ? mpi_ranges_state_size(fi, h->capacity, n) : 0;
    if (size == 0 || dst_len < size) return MP_EINVAL;
    memcpy(dst, st, RS_AREA_OFF + fi->area_size + (uint64_t)rs->top * fi->node_size);
    mp_head_t *d = rs_head(dst);
    mp_rset_t *ds = rs_set(dst);
    d->state_size = size;
    d->param[0] = n;
    ds->max_blocks = (uint32_t)n;
    ds->hash_bits = rs_hash_bits(n);
    ds->nursery_bits = rs_nursery_bits(ds->hash_bits);
    ds->table_off = rs_table_off(fi, n);
    ds->nursery_off = ds->table_off + ((uint64_t)1 << ds->hash_bits) * sizeof(mp_slot_t);
    mp_slot_t *t = rs_table(dst, fi); /* the nursery follows it */
    uint64_t slots = ((uint64_t)1 << ds->hash_bits) + ((uint64_t)1 << ds->nursery_bits);
    for (uint64_t s = 0; s < slots; s++) {
        t[s].tag = 0;
        t[s].node = MP_NIL;
    }
    const mp_slot_t *old = rs_ctable(st, fi); /* old table, then old nursery */
    uint64_t old_slots = ((uint64_t)1 << rs->hash_bits) + ((uint64_t)1 << rs->nursery_bits);
    for (uint64_t s = 0; s < old_slots; s++)
        if (old[s].node != MP_NIL) rs_table_insert(dst, fi, old[s].tag, old[s].node);
    return MP_OK;
}
