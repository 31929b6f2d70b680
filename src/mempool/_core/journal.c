/*
 * journal.c -- transactions over a strategy state and its shadow copy (journal.h).
 *
 * Why it holds.  Stores reach memory in program order (x86-64 TSO; elsewhere the
 * release stores and fences of mpi_publish(), journal_log.h, order them; and every
 * store a killed process made is seen by the next one, which takes the lock or opens
 * the file after the kernel has ended it), and a killed process stops between two
 * stores.  So at any kill point:
 *   phase IDLE       st == shadow, the undo log is empty: nothing to do.
 *   phase ACTIVE     the shadow has not been written since the last commit (only the
 *                    commit writes it), so it is the state before the call; st is
 *                    anything.  Every word outside the state the call changed was
 *                    logged (offset, old value) and the log's count published before
 *                    the word was written: applying the log backwards restores each
 *                    to its value before the call (a record whose store never
 *                    happened restores the value it still has).
 *   phase COMMITTED  st and the other words are complete (the phase store comes after
 *                    the last of them); the shadow is anything: copy st over it.
 * A recovery killed half-way leaves the phase as it found it, and each recovery step
 * is idempotent (copies from the copy the phase trusts; restores logged values).
 *
 * The operations a transaction ran are listed in this process's memory, not in the
 * journal: only the committing process replays them, and a recovery never needs them.
 * An operation that failed is listed too: a failed call changes nothing by the error
 * model, but replaying it is what keeps the copies equal even where a strategy does
 * not live up to that (the Heap's spare page, see the known bugs).
 */
#include <string.h>

#include "internal.h"
#include "journal.h"
#include "journal_log.h"

#define JOURNAL_MAGIC 0x314c4e524a504dull /* "MPJRNL1" */

enum { OP_ALLOC = 1, OP_FREE, OP_REALLOC, OP_RESET };

void mp_journal_init(mp_journal_t *j)
{
    memset(j, 0, sizeof *j);
    j->magic = JOURNAL_MAGIC;
}

void mp_tx_setup(mp_tx_t *t, mp_journal_t *j, const mp_ops_t *ops, void *st, void *shadow,
                 uint64_t st_len, void *undo_lo, void *undo_hi)
{
    t->j = j;
    t->ops = ops;
    t->st = st;
    t->shadow = shadow;
    t->st_len = st_len;
    t->undo_lo = undo_lo;
    t->undo_hi = undo_hi;
    t->out_lo = t->out_hi = NULL;
    t->nops = 0;
}

/* Does the word [w, w + 8) overlap [lo, lo + n)?  (addresses as integers: no pointer
 * leaves its object; w <= the undo range's end - 8, so w + 8 does not wrap) */
static int overlaps(uintptr_t w, const void *lo, uint64_t n)
{
    uintptr_t l = (uintptr_t)lo;
    return lo && w < l + n && l < w + 8;
}

/* The word an undo record names, or NULL when it names none the log may restore: in
 * the undo range, aligned, outside the keep-out span, the state and its shadow.  In
 * integers, wrapping as the machine does, then range-checked: an offset chosen to
 * wrap the pointer past the top of the address space passed `w + 8 <= hi` as 0, and
 * the recovery wrote at 0xfff...8.  Neither the state nor its shadow: only the commit
 * writes them, never an undo record (one naming the shadow put it apart from the
 * state, and the next roll-back copied the wrong heap over it). */
static char *undo_word(const mp_tx_t *t, int64_t off)
{
    uintptr_t w = (uintptr_t)t->j + (uintptr_t)off, lo = (uintptr_t)t->undo_lo;
    uintptr_t hi = (uintptr_t)t->undo_hi;
    if (!t->undo_lo || hi - lo < 8 || w < lo || w > hi - 8 || (w & 7)) return NULL;
    if (t->out_lo && overlaps(w, t->out_lo, (uint64_t)(t->out_hi - t->out_lo))) return NULL;
    if (overlaps(w, t->st, t->st_len) || overlaps(w, t->shadow, t->st_len)) return NULL;
    return (char *)w;
}

int mp_tx_validate(const mp_tx_t *t, char *msg, size_t msglen)
{
    const mp_journal_t *j = t->j;
    if (j->magic != JOURNAL_MAGIC) MPI_FAIL("bad journal magic");
    if (j->phase > MP_TX_COMMITTED) MPI_FAIL("bad journal phase %llu", (unsigned long long)j->phase);
    if (j->nundo > MP_JOURNAL_UNDO)
        MPI_FAIL("the journal holds %llu undo records, at most %d", (unsigned long long)j->nundo,
                 MP_JOURNAL_UNDO);
    for (uint64_t k = 0; k < j->nundo; k++)
        if (!undo_word(t, j->undo[k].off))
            MPI_FAIL("undo record %llu names a word outside the registry", (unsigned long long)k);
    return MP_OK;
}

void mp_tx_begin(mp_tx_t *t)
{
    t->nops = 0;
    t->j->nundo = 0;
    mpi_publish(&t->j->phase, MP_TX_ACTIVE);
}

/* One more operation to replay (after room_for_one). */
static void note(mp_tx_t *t, uint32_t code, uint64_t a, uint64_t b, uint64_t c, int rc,
                 uint64_t out)
{
    mpi_assert(t->nops < MP_TX_OPS); /* each mp_tx_* op made room first */
    mp_tx_op_t *o = &t->op[t->nops++];
    o->code = code;
    o->a = a;
    o->b = b;
    o->c = c;
    o->rc = (uint32_t)rc;
    o->out = out;
}

/* A full list commits what it holds first (the operations stay in order). */
static inline void room_for_one(mp_tx_t *t)
{
    if (t->nops == MP_TX_OPS) mp_tx_room(t, 1, 0);
}

int mp_tx_alloc(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out)
{
    room_for_one(t);
    uint64_t o = MP_NO_SPACE;
    int rc = t->ops->alloc(t->st, size, align, &o);
    note(t, OP_ALLOC, size, align, 0, rc, o);
    *out = o;
    return rc;
}

int mp_tx_free(mp_tx_t *t, uint64_t offset)
{
    room_for_one(t);
    int rc = t->ops->free(t->st, offset);
    note(t, OP_FREE, offset, 0, 0, rc, 0);
    return rc;
}

int mp_tx_realloc(mp_tx_t *t, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    room_for_one(t);
    uint64_t o = MP_NO_SPACE;
    int rc = t->ops->realloc(t->st, offset, size, align, &o);
    note(t, OP_REALLOC, offset, size, align, rc, o);
    *out = o;
    return rc;
}

void mp_tx_reset(mp_tx_t *t)
{
    room_for_one(t);
    t->ops->reset(t->st);
    note(t, OP_RESET, 0, 0, 0, MP_OK, 0);
}

void mp_tx_room(mp_tx_t *t, unsigned ops, unsigned undo)
{
    if (t->nops + ops > MP_TX_OPS || t->j->nundo + undo > MP_JOURNAL_UNDO) {
        mp_tx_commit(t);
        mp_tx_begin(t);
    }
}

_Thread_local const mp_tx_t *mp_tx_replaying;

/* Replay the listed operations on the shadow. */
static void replay(mp_tx_t *t)
{
    const mp_ops_t *ops = t->ops;
    void *sh = t->shadow;
    int mark = ops->reads_replaying;
    if (mark) mp_tx_replaying = t;
    for (uint32_t k = 0; k < t->nops; k++) {
        const mp_tx_op_t *o = &t->op[k];
        uint64_t out = MP_NO_SPACE;
        int rc = MP_OK;
        switch (o->code) {
        case OP_ALLOC: rc = ops->alloc(sh, o->a, o->b, &out); break;
        case OP_FREE: rc = ops->free(sh, o->a); out = 0; break;
        case OP_REALLOC: rc = ops->realloc(sh, o->a, o->b, o->c, &out); break;
        default: ops->reset(sh); out = 0; break;
        }
        /* deterministic strategies give the same answers on the same state */
        mpi_assert((uint32_t)rc == o->rc && (rc != MP_OK || out == o->out));
        (void)rc;
        (void)out;
    }
    if (mark) mp_tx_replaying = NULL;
}

void mp_tx_commit(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    if (t->nops == 0 && j->nundo == 0) { /* nothing changed */
        mpi_publish(&j->phase, MP_TX_IDLE);
        return;
    }
    mpi_publish(&j->phase, MP_TX_COMMITTED);
    replay(t);
    j->seq++;
    t->nops = 0;
    mpi_publish(&j->phase, MP_TX_IDLE);
#ifdef MP_DEBUG
    /* the copies agree after every commit (small states: the compare costs a copy) */
    if (t->st_len <= ((uint64_t)1 << 20)) mpi_assert(memcmp(t->st, t->shadow, t->st_len) == 0);
#endif
}

void mp_tx_abort(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    memcpy(t->st, t->shadow, t->st_len); /* the shadow: the state before the call */
    char *w;
    for (uint64_t k = j->nundo; k-- > 0;)
        if ((w = undo_word(t, j->undo[k].off))) memcpy(w, &j->undo[k].old, 8);
    t->nops = 0;
    j->nundo = 0;
    mpi_publish(&j->phase, MP_TX_IDLE);
}

int mp_tx_recover(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    uint64_t phase = __atomic_load_n(&j->phase, __ATOMIC_ACQUIRE);
    t->nops = 0;
    if (phase == MP_TX_ACTIVE) {
        memcpy(t->st, t->shadow, t->st_len);
        char *w;
        for (uint64_t k = j->nundo; k-- > 0;) /* validated: inside the undo range */
            if ((w = undo_word(t, j->undo[k].off))) memcpy(w, &j->undo[k].old, 8);
        j->rolled_back++;
    } else if (phase == MP_TX_COMMITTED) {
        memcpy(t->shadow, t->st, t->st_len);
        j->rolled_forward++;
    } else {
        return MP_TX_IDLE;
    }
    j->nundo = 0;
    mpi_publish(&j->phase, MP_TX_IDLE);
    return (int)phase;
}
