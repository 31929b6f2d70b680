/*
 * journal.c -- transactions over a strategy state and its shadow copy (journal.h).
 *
 * Why it holds.  Stores reach memory in program order (x86-64 TSO; elsewhere the
 * release stores and fences of mpi_publish(), journal_log.h, order them; and every
 * store a killed process made is seen by the next one, which takes the lock or opens
 * the file after the kernel has ended it), and a killed process stops between two
 * stores.  So at any kill point:
 *   phase IDLE       (no redo log) st == shadow; the undo log's records are stale
 *                    (the next begin empties it): nothing to do.
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
 * With a redo log (journal.h) the phase word also counts the log's committed entries,
 * so the commit is one store, and at any kill point:
 *   IDLE | n         st is the shadow with entries 0..n-1 replayed on it (the shadow
 *                    is written only by a checkpoint, under COMMITTED): nothing to do.
 *   ACTIVE | n       the shadow with entries 0..n-1 replayed on it is the state before
 *                    the call (the call's own entries, from n on, are not counted
 *                    yet); the undo log as above.
 *   COMMITTED | n    a checkpoint (st complete, no call under way): copy st over the
 *                    shadow, then IDLE | 0.
 * Recovery of ACTIVE replays on st (a copy of the shadow) and ends in a checkpoint;
 * killed half-way, the phase is still ACTIVE and the shadow untouched: it starts
 * again.  The replay goes through the strategy's own table (t->raw), and an
 * operation that a wrapper refused or undid itself (a limit) is never logged: its
 * transaction ends in a checkpoint instead.
 *
 * Without a log, the operations a transaction ran are listed in this process's memory,
 * not in the journal: only the committing process replays them, and a recovery never
 * needs them.
 * An operation that failed is listed too: a failed call changes nothing by the error
 * model, but replaying it is what keeps the copies equal even where a strategy does
 * not live up to that (the Heap's spare page, see the known bugs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "journal.h"
#include "journal_log.h"

#define JOURNAL_MAGIC 0x314c4e524a504dull /* "MPJRNL1" */

enum { OP_ALLOC = 1, OP_FREE, OP_REALLOC, OP_RESET };

_Thread_local int mp_tx_intervened;

static inline uint64_t phase_word(const mp_journal_t *j)
{
    return __atomic_load_n(&j->phase, __ATOMIC_ACQUIRE);
}

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
    t->undone = NULL;
    t->undone_arg = NULL;
    t->log = NULL;
    t->log_cap = t->base = 0;
    t->raw = ops ? mp_ops_by_kind(ops->kind) : NULL;
    t->full = 0;
    t->nops = 0;
}

void mp_tx_set_log(mp_tx_t *t, void *log, uint64_t cap)
{
    mpi_assert(!log || cap > MP_TX_OPS);
    t->log = log;
    t->log_cap = log ? cap : 0;
}

void mp_tx_move(mp_tx_t *t, void *st, void *shadow, uint64_t st_len)
{
    t->st = st;
    t->shadow = shadow;
    t->st_len = st_len;
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
 * the recovery wrote at 0xfff...8.  Neither the state, its shadow nor the redo log:
 * only the calls and the checkpoints write them, never an undo record (one naming the
 * shadow put it apart from the state, and the next roll-back copied the wrong heap
 * over it). */
static char *undo_word(const mp_tx_t *t, int64_t off)
{
    uintptr_t w = (uintptr_t)t->j + (uintptr_t)off, lo = (uintptr_t)t->undo_lo;
    uintptr_t hi = (uintptr_t)t->undo_hi;
    if (!t->undo_lo || hi - lo < 8 || w < lo || w > hi - 8 || (w & 7)) return NULL;
    if (t->out_lo && overlaps(w, t->out_lo, (uint64_t)(t->out_hi - t->out_lo))) return NULL;
    if (overlaps(w, t->st, t->st_len) || overlaps(w, t->shadow, t->st_len)) return NULL;
    if (t->log && overlaps(w, t->log, t->log_cap * MP_TX_LOG_ENTRY)) return NULL;
    return (char *)w;
}

int mp_tx_validate(const mp_tx_t *t, char *msg, size_t msglen)
{
    const mp_journal_t *j = t->j;
    if (j->magic != JOURNAL_MAGIC) MPI_FAIL("bad journal magic");
    uint64_t w = j->phase, n = MP_TX_NLOG(w);
    if (MP_TX_PHASE(w) > MP_TX_COMMITTED || n > t->log_cap)
        MPI_FAIL("bad journal phase %llu", (unsigned long long)w);
    for (uint64_t k = 0; k < n; k++)
        if (t->log[k].code < OP_ALLOC || t->log[k].code > OP_RESET)
            MPI_FAIL("redo log entry %llu has code %u", (unsigned long long)k, t->log[k].code);
    if (n && !t->raw) MPI_FAIL("a redo log to replay and no strategy");
    if (j->nundo > MP_JOURNAL_UNDO)
        MPI_FAIL("the journal holds %llu undo records, at most %d", (unsigned long long)j->nundo,
                 MP_JOURNAL_UNDO);
    for (uint64_t k = 0; k < j->nundo; k++)
        if (!undo_word(t, j->undo[k].off))
            MPI_FAIL("undo record %llu names a word outside the registry", (unsigned long long)k);
    return MP_OK;
}

/* The state trusted (COMMITTED, n committed entries), copied over the shadow: the
 * caller then publishes IDLE | 0 (the log empty).  Every checkpoint's first half. */
static void to_shadow(mp_tx_t *t, uint64_t n)
{
    mpi_publish(&t->j->phase, MP_TX_COMMITTED | (n << 8));
    memcpy(t->shadow, t->st, t->st_len);
    t->j->checkpoints++;
}

void mp_tx_checkpoint(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    uint64_t w = phase_word(j);
    mpi_assert(MP_TX_PHASE(w) == MP_TX_IDLE);
    if (!MP_JOURNAL_ON || !t->log || MP_TX_NLOG(w) == 0) return;
    to_shadow(t, MP_TX_NLOG(w));
    mpi_publish(&j->phase, MP_TX_IDLE);
}

static inline __attribute__((always_inline)) void tx_begin(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    t->nops = 0;
    t->full = 0;
    if (!MP_JOURNAL_ON) return;
    j->nundo = 0;
    uint64_t n = 0;
    if (t->log) {
        n = MP_TX_NLOG(j->phase);
        if (n + MP_TX_OPS > t->log_cap) { /* the log is full: copy the state instead */
            mp_tx_checkpoint(t);
            n = 0;
        }
        t->base = n;
    }
    mpi_publish(&j->phase, MP_TX_ACTIVE | (n << 8));
}

void mp_tx_begin(mp_tx_t *t) { tx_begin(t); }

/* One more operation to replay (after room_for_one): to the log, past its committed
 * entries, or to this process's list. */
static inline __attribute__((always_inline)) void note(mp_tx_t *t, uint32_t code, uint64_t a,
                                                      uint64_t b, uint64_t c, int rc,
                                                      uint64_t out)
{
    mpi_assert(t->nops < MP_TX_OPS); /* each mp_tx_* op made room first */
    if (!MP_JOURNAL_ON) return;
    mp_tx_op_t *o;
    if (t->log) {
        if (__builtin_expect(t->ops != t->raw, 0) && mp_tx_intervened) {
            t->full = 1; /* not what the strategy's own op does: not logged */
            return;
        }
        o = &t->log[t->base + t->nops++];
    } else {
        o = &t->op[t->nops++];
    }
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

static inline __attribute__((always_inline)) int tx_alloc(mp_tx_t *t, uint64_t size,
                                                          uint64_t align, uint64_t *out)
{
    room_for_one(t);
    uint64_t o = MP_NO_SPACE;
    if (t->ops != t->raw) mp_tx_intervened = 0; /* (only a wrapper sets it) */
    int rc = t->ops->alloc(t->st, size, align, &o);
    note(t, OP_ALLOC, size, align, 0, rc, o);
    *out = o;
    return rc;
}

static inline __attribute__((always_inline)) int tx_free(mp_tx_t *t, uint64_t offset)
{
    room_for_one(t);
    if (t->ops != t->raw) mp_tx_intervened = 0; /* (only a wrapper sets it) */
    int rc = t->ops->free(t->st, offset);
    note(t, OP_FREE, offset, 0, 0, rc, 0);
    return rc;
}

int mp_tx_alloc(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out)
{
    return tx_alloc(t, size, align, out);
}

int mp_tx_free(mp_tx_t *t, uint64_t offset) { return tx_free(t, offset); }

int mp_tx_realloc(mp_tx_t *t, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out)
{
    room_for_one(t);
    uint64_t o = MP_NO_SPACE;
    if (t->ops != t->raw) mp_tx_intervened = 0; /* (only a wrapper sets it) */
    int rc = t->ops->realloc(t->st, offset, size, align, &o);
    note(t, OP_REALLOC, offset, size, align, rc, o);
    *out = o;
    return rc;
}

void mp_tx_reset(mp_tx_t *t)
{
    room_for_one(t);
    if (t->ops != t->raw) mp_tx_intervened = 0; /* (only a wrapper sets it) */
    t->ops->reset(t->st);
    note(t, OP_RESET, 0, 0, 0, MP_OK, 0);
}

void mpi_tx_renew(mp_tx_t *t)
{
    mp_tx_commit(t);
    mp_tx_begin(t);
}

_Thread_local const mp_tx_t *mp_tx_replaying;

/* Run n listed operations on the copy sh through ops; MP_OK, or MP_ECORRUPT at the
 * first whose answer is not the one listed (deterministic strategies give the same
 * answers on the same state: only a damaged log or copy does not). */
static int run_ops(const mp_ops_t *ops, void *sh, const mp_tx_op_t *op, uint64_t n, uint64_t *bad)
{
    for (uint64_t k = 0; k < n; k++) {
        const mp_tx_op_t *o = &op[k];
        uint64_t out = MP_NO_SPACE;
        int rc = MP_OK;
        switch (o->code) {
        case OP_ALLOC: rc = ops->alloc(sh, o->a, o->b, &out); break;
        case OP_FREE: rc = ops->free(sh, o->a); out = 0; break;
        case OP_REALLOC: rc = ops->realloc(sh, o->a, o->b, o->c, &out); break;
        default: ops->reset(sh); out = 0; break;
        }
        if ((uint32_t)rc != o->rc || (rc == MP_OK && out != o->out)) {
            *bad = k;
            return MP_ECORRUPT;
        }
    }
    return MP_OK;
}

/* Replay the listed operations on the shadow (no log). */
static void replay(mp_tx_t *t)
{
    const mp_ops_t *ops = t->ops;
    int mark = ops->reads_replaying;
    if (mark) mp_tx_replaying = t;
    uint64_t bad = 0;
    int rc = run_ops(ops, t->shadow, t->op, t->nops, &bad);
    mpi_assert(rc == MP_OK);
    (void)rc;
    if (mark) mp_tx_replaying = NULL;
}

#ifdef MP_DEBUG
/* the copies agree after every commit (small states: the check costs a copy; with a
 * long log, every 64th commit: the check replays it) */
static void debug_verify(const mp_tx_t *t)
{
    char msg[160];
    if (t->st_len <= ((uint64_t)1 << 20) && (t->base <= 64 || t->j->seq % 64 == 0))
        mpi_assert(mp_tx_verify(t, t->st, t->shadow, t->st_len, msg, sizeof msg) == MP_OK);
}
#else
static inline void debug_verify(const mp_tx_t *t) { (void)t; }
#endif

static inline __attribute__((always_inline)) void tx_commit(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    if (!MP_JOURNAL_ON) return;
    if (__builtin_expect(t->log != NULL, 1) && !t->full) {
        /* the commit: the count of committed entries, one store (the same count when
         * nothing changed) */
        uint32_t n = t->nops;
        int changed = n || j->nundo;
        if (changed) j->seq++;
        t->base += n;
        t->nops = 0;
        mpi_publish(&j->phase, MP_TX_IDLE | (t->base << 8));
        if (changed) debug_verify(t); /* (not a call that changed nothing: an attach's
                                         first lock, before its check() refuses a
                                         crafted shadow) */
        return;
    }
    if (t->nops == 0 && j->nundo == 0 && !t->full) { /* nothing changed */
        mpi_publish(&j->phase, MP_TX_IDLE | (t->base << 8));
        return;
    }
    if (t->log) { /* an operation a wrapper changed: the state is copied, the log emptied */
        to_shadow(t, t->base);
        t->base = 0;
        t->full = 0;
    } else {
        mpi_publish(&j->phase, MP_TX_COMMITTED);
        replay(t);
    }
    j->seq++;
    t->nops = 0;
    mpi_publish(&j->phase, MP_TX_IDLE);
    debug_verify(t);
}

void mp_tx_commit(mp_tx_t *t) { tx_commit(t); }

int mp_tx_alloc1(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out)
{
    tx_begin(t);
    int rc = tx_alloc(t, size, align, out);
    tx_commit(t);
    return rc;
}

int mp_tx_free1(mp_tx_t *t, uint64_t offset)
{
    tx_begin(t);
    int rc = tx_free(t, offset);
    tx_commit(t);
    return rc;
}

/* The undo log applied backwards (the words outside the state as they were). */
static void undo_all(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    char *w;
    for (uint64_t k = j->nundo; k-- > 0;) /* validated: inside the undo range */
        if ((w = undo_word(t, j->undo[k].off))) memcpy(w, &j->undo[k].old, 8);
}

/* The log's first n entries replayed on x, a copy of a shadow of len bytes (checked
 * first: it may come from a crafted file); MP_OK or MP_ECORRUPT with the reason in msg. */
static int replay_log(const mp_tx_t *t, void *x, uint64_t len, uint64_t n, char *msg,
                      size_t msglen)
{
    int rc = t->raw->check(x, len, msg, msglen);
    if (rc) return rc;
    uint64_t bad = 0;
    if (run_ops(t->raw, x, t->log, n, &bad))
        MPI_FAIL("redo log entry %llu does not replay as it was logged", (unsigned long long)bad);
    return MP_OK;
}

/* st from the shadow and the log's first n entries (a roll-back). */
static int roll_back(mp_tx_t *t, uint64_t n, char *msg, size_t msglen)
{
    memcpy(t->st, t->shadow, t->st_len);
    return n ? replay_log(t, t->st, t->st_len, n, msg, msglen) : MP_OK;
}

void mp_tx_abort(mp_tx_t *t)
{
    mp_journal_t *j = t->j;
    uint64_t n = t->log ? t->base : 0;
    if (!MP_JOURNAL_ON) {
        t->nops = 0;
        j->nundo = 0;
        return;
    }
    char msg[160];
    int rc = roll_back(t, n, msg, sizeof msg); /* the state before the call */
    mpi_assert(rc == MP_OK);                   /* (it was replayed once already) */
    undo_all(t);
    if (t->undone) rc = t->undone(t->undone_arg, msg, sizeof msg);
    mpi_assert(rc == MP_OK); /* (the words it reads were checked when the pool opened) */
    (void)rc;
    t->nops = 0;
    t->full = 0;
    j->nundo = 0;
    mpi_publish(&j->phase, MP_TX_IDLE | (n << 8));
}

int mp_tx_recover(mp_tx_t *t, char *msg, size_t msglen)
{
    mp_journal_t *j = t->j;
    uint64_t w = phase_word(j), n = MP_TX_NLOG(w);
    int phase = (int)MP_TX_PHASE(w);
    t->nops = 0;
    t->full = 0;
    if (!MP_JOURNAL_ON) phase = MP_TX_IDLE;
    if (phase == MP_TX_ACTIVE) {
        int rc = roll_back(t, n, msg, msglen);
        if (rc) return rc;
        undo_all(t);
        if (t->undone && (rc = t->undone(t->undone_arg, msg, msglen))) return rc;
        j->rolled_back++;
        if (n) { /* the shadow brought up to date (a checkpoint): the log is empty */
            j->nundo = 0;
            to_shadow(t, n);
        }
    } else if (phase == MP_TX_COMMITTED) {
        memcpy(t->shadow, t->st, t->st_len);
        j->rolled_forward++;
    } else {
        t->base = n;
        return MP_TX_IDLE;
    }
    j->nundo = 0;
    t->base = 0;
    mpi_publish(&j->phase, MP_TX_IDLE);
    return phase;
}

int mp_tx_verify(const mp_tx_t *t, const void *st, const void *sh, uint64_t len, char *msg,
                 size_t msglen)
{
    uint64_t n = t->log ? MP_TX_NLOG(phase_word(t->j)) : 0;
    if (!MP_JOURNAL_ON) return MP_OK;
    if (!n) {
        if (memcmp(st, sh, (size_t)len)) MPI_FAIL("the state and its shadow copy differ");
        return MP_OK;
    }
    void *x = malloc((size_t)len);
    if (!x) {
        snprintf(msg, msglen, "no memory for a copy of the state (%llu bytes)",
                 (unsigned long long)len);
        return MP_EINVAL;
    }
    memcpy(x, sh, (size_t)len);
    int rc = replay_log(t, x, len, n, msg, msglen);
    if (!rc && memcmp(x, st, (size_t)len)) {
        snprintf(msg, msglen, "the state differs from its shadow copy with the redo log replayed");
        rc = MP_ECORRUPT;
    }
    free(x);
    return rc;
}
