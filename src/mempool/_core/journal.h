/*
 * journal.h -- crash consistency for a strategy state that outlives the process
 * changing it (a persistent file pool, a shared pool): a process killed at any
 * instruction of a call leaves the state as it was before the call or as it is
 * after it, once the next process opens the file or takes the lock and calls
 * mp_tx_recover().  (journal.c has the protocol and why it is correct.)
 *
 * Two copies of the strategy state, `st` and its `shadow`, identical between calls.
 * A call is a transaction:
 *
 *   mp_tx_begin        the journal says ACTIVE
 *   mp_tx_alloc/...    each strategy operation runs on st, and is listed (in this
 *                      process's memory) to be run again on the shadow
 *   mp_jset64/32       each other word the call writes (a shared pool's registry)
 *                      goes through the journal's undo log first
 *   mp_tx_commit       the journal says COMMITTED; the listed operations run again
 *                      on the shadow (strategies are deterministic functions of their
 *                      state: the shadow becomes st again); the journal says IDLE
 *
 * Recovery: ACTIVE -> the shadow is the state before the call: copied over st, and
 * the undo log is applied backwards; COMMITTED -> st is the state after it: copied
 * over the shadow.  Both are idempotent (a recovery killed half-way is recovered
 * again).  The cost on the hot path: each operation runs twice, and the two phase
 * stores; the memory cost: a second copy of the state.
 */
#ifndef MEMPOOL_JOURNAL_H
#define MEMPOOL_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mempool.h"

#define MP_JOURNAL_BYTES 2048 /* what a segment reserves for its journal */
#define MP_JOURNAL_UNDO ((MP_JOURNAL_BYTES - 64) / 16)
#define MP_TX_OPS 64 /* operations per transaction (mp_tx_room: commit sooner) */

enum { MP_TX_IDLE = 0, MP_TX_ACTIVE = 1, MP_TX_COMMITTED = 2 };

/* The journal, in the segment or the file (MP_JOURNAL_BYTES). */
typedef struct mp_journal {
    uint64_t magic;          /* MP_JOURNAL_MAGIC                                  */
    uint64_t phase;          /* MP_TX_*                                           */
    uint64_t seq;            /* transactions committed                            */
    uint64_t nundo;          /* undo records in use                               */
    uint64_t rolled_back;    /* recoveries of an interrupted call: undone         */
    uint64_t rolled_forward; /* ... and completed                                 */
    uint64_t pad[2];
    struct {
        int64_t off;  /* the word's byte offset from the journal (position-free) */
        uint64_t old; /* its value before the call                           */
    } undo[MP_JOURNAL_UNDO];
} mp_journal_t;
_Static_assert(sizeof(mp_journal_t) == MP_JOURNAL_BYTES, "the journal fills its room");

typedef struct mp_tx_op {
    uint32_t code, rc;
    uint64_t a, b, c, out;
} mp_tx_op_t;

/* A transaction context: this process's view of one journaled state. */
typedef struct mp_tx {
    mp_journal_t *j;
    const mp_ops_t *ops;
    void *st, *shadow;
    uint64_t st_len;
    char *undo_lo;           /* words the undo log may name: [undo_lo, undo_hi)     */
    char *undo_hi;
    char *out_lo;            /* ... but none in [out_lo, out_hi) (a shared pool's lock
                                and journal: mp_shared_keep_out); NULL: no such span */
    char *out_hi;
    uint32_t nops;
    mp_tx_op_t op[MP_TX_OPS];
} mp_tx_t;

/* The transaction whose operations this thread is replaying on its shadow (inside
 * mp_tx_commit) with a table whose reads_replaying is set, else NULL.  A wrapped operation table (the binding's limits and
 * recorder) keys its settings by state: during a replay the shadow stands for st, so
 * a limit refuses on the shadow what it refused on st, and nothing is recorded twice. */
extern _Thread_local const mp_tx_t *mp_tx_replaying;

/* A fresh journal (IDLE, nothing logged). */
void mp_journal_init(mp_journal_t *j);
/* Bind t to a journal and the two copies (st_len bytes each); undo records may name
 * words in [undo_lo, undo_hi) (NULL, NULL: none). */
void mp_tx_setup(mp_tx_t *t, mp_journal_t *j, const mp_ops_t *ops, void *st, void *shadow,
                 uint64_t st_len, void *undo_lo, void *undo_hi);
/* Validate the journal t is bound to, as read from a segment or a file: magic, phase,
 * and every undo record naming an aligned word in t's undo range. */
int mp_tx_validate(const mp_tx_t *t, char *msg, size_t msglen);

void mp_tx_begin(mp_tx_t *t);
int mp_tx_alloc(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out);
int mp_tx_free(mp_tx_t *t, uint64_t offset);
int mp_tx_realloc(mp_tx_t *t, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out);
void mp_tx_reset(mp_tx_t *t);
/* Commit and carry on in a new transaction when fewer than `ops` operations or
 * `undo` undo records are left (loops call it between their steps, at points where
 * the state is consistent). */
void mp_tx_room(mp_tx_t *t, unsigned ops, unsigned undo);
void mp_tx_commit(mp_tx_t *t);
/* Give the transaction up (a call that failed half-way, nothing committed in it since
 * mp_tx_begin): the state back from the shadow, the undo log applied backwards. */
void mp_tx_abort(mp_tx_t *t);
/* Undo-logged stores of words outside the strategy state (lock held): mp_jset64/32,
 * inline in journal_log.h (for the core files). */

/* Bring an interrupted call to an end: MP_TX_ACTIVE (rolled back), MP_TX_COMMITTED
 * (rolled forward) or MP_TX_IDLE (nothing to do). */
int mp_tx_recover(mp_tx_t *t);
static inline int mp_tx_pending(const mp_tx_t *t)
{
    return __atomic_load_n(&t->j->phase, __ATOMIC_ACQUIRE) != MP_TX_IDLE;
}

#endif /* MEMPOOL_JOURNAL_H */
