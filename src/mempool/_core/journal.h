/*
 * journal.h -- crash consistency for a strategy state that outlives the process
 * changing it (a persistent file pool, a shared pool): a process killed at any
 * instruction of a call leaves the state as it was before the call or as it is
 * after it, once the next process opens the file or takes the lock and calls
 * mp_tx_recover().  (journal.c has the protocol and why it is correct.)
 *
 * Without a redo log (formats 3 and 4): two copies of the strategy state, `st` and its
 * `shadow`, identical between calls.  A call is a transaction:
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
 *
 * With a redo log (mp_tx_set_log: format 5 files and segments) the operations are not
 * run again at each commit.  Each is written to the log in the file or segment
 * instead, and the commit is one store: the phase word (IDLE) with the count of the
 * log's committed entries in its upper bits.  Between calls st is the shadow with the
 * log's entries replayed on it (strategies are deterministic); a checkpoint (every
 * log_cap - MP_TX_OPS entries, the state's size in log bytes: ~one byte of copy per
 * byte logged) copies st over the shadow and empties the log.  Recovery: ACTIVE ->
 * the shadow copied over st, checked, the committed entries replayed on it, the undo
 * log applied backwards, then a checkpoint; COMMITTED (a checkpoint under way) -> st
 * copied over the shadow.  The cost on the hot path: a 40-byte entry and two phase
 * stores per call, and the amortised copy; the memory cost: the log.
 */
#ifndef MEMPOOL_JOURNAL_H
#define MEMPOOL_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "mempool.h"

/* MP_NO_JOURNAL (setup.py: MEMPOOL_NO_JOURNAL=1): a build for measuring the journal's
 * cost and nothing else (bench/journal_before_after.sh's "nojournal" tree).  Every
 * transaction is empty: no phase stores, no log, no undo records, no checkpoints; a
 * recovery finds nothing to do, mp_tx_verify accepts any pair and mp_tx_abort leaves
 * the state as the failed call left it.  No crash consistency: never a build to use. */
#ifdef MP_NO_JOURNAL
#define MP_JOURNAL_ON 0
#else
#define MP_JOURNAL_ON 1
#endif

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
    uint64_t checkpoints;    /* redo log: the shadow brought up to date           */
    uint64_t pad;
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
#define MP_TX_LOG_ENTRY 40 /* bytes per entry of a redo log (_segment.LOG_ENTRY) */
_Static_assert(sizeof(mp_tx_op_t) == MP_TX_LOG_ENTRY, "a log entry is 40 bytes");

/* The journal's phase word: MP_TX_* in its low byte, the redo log's committed entries
 * above it (0 without a log). */
#define MP_TX_PHASE(w) ((w) & 0xff)
#define MP_TX_NLOG(w) ((w) >> 8)

/* A transaction context: this process's view of one journaled state. */
typedef struct mp_tx {
    mp_journal_t *j;
    const mp_ops_t *ops;
    void *st, *shadow;
    uint64_t st_len;
    char *undo_lo;           /* words the undo log may name: [undo_lo, undo_hi)     */
    char *undo_hi;
    char *out_lo;            /* ... but none in [out_lo, out_hi) (a shared pool's lock
                                and journal: mp_shared_bind_tx); NULL: no such span */
    char *out_hi;
    /* Run by a roll-back (a recovery's, an abort's) once the undo log is applied and
     * before the phase leaves ACTIVE: what derives from the logged words and is not
     * logged itself (a shared pool's registry index, count and free list:
     * mp_shared_bind_tx) is made again there, so that no kill point leaves IDLE with
     * it stale.  Idempotent (a roll-back killed in it runs again).  MP_OK, or
     * MP_ECORRUPT with the reason in msg (the phase stays ACTIVE).  NULL: none. */
    int (*undone)(void *arg, char *msg, size_t msglen);
    void *undone_arg;
    mp_tx_op_t *log;         /* the redo log (NULL: none, the operations replay on the
                                shadow at each commit) and its entries                */
    uint64_t log_cap;
    uint64_t base;           /* redo log: its committed entries when this call began  */
    const mp_ops_t *raw;     /* the strategy's own table: what a log replays through  */
    int full;                /* an operation a wrapper changed (a limit refused it): the
                                commit copies the state instead of logging it          */
    uint32_t nops;
    mp_tx_op_t op[MP_TX_OPS];
} mp_tx_t;

/* Set by a wrapped operation table (the binding's limits) when it refused or undid
 * an operation itself: the strategy's own operation replayed from a log would not do
 * the same, so the transaction ends in a checkpoint instead (mp_tx_t.full). */
extern _Thread_local int mp_tx_intervened;

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
/* Give t a redo log of cap entries (MP_TX_LOG_ENTRY bytes each, cap > MP_TX_OPS)
 * in the file or segment; before mp_tx_validate.  t's ops must be set. */
void mp_tx_set_log(mp_tx_t *t, void *log, uint64_t cap);
/* The state pair moved (grown, followed): the rest of t stays. */
void mp_tx_move(mp_tx_t *t, void *st, void *shadow, uint64_t st_len);
/* Validate the journal t is bound to, as read from a segment or a file: magic, phase,
 * every undo record naming an aligned word in t's undo range, the log's count and
 * its entries' codes. */
int mp_tx_validate(const mp_tx_t *t, char *msg, size_t msglen);
/* Between calls (journal idle): is st what the shadow with the log's committed
 * entries replayed on it gives (without a log: equal to the shadow)?  MP_OK, or
 * MP_ECORRUPT with the reason in msg, or MP_EINVAL: no memory for the copy.  st and sh: t's, or a pair that is
 * about to become t's (len bytes each). */
int mp_tx_verify(const mp_tx_t *t, const void *st, const void *sh, uint64_t len, char *msg,
                 size_t msglen);
/* Bring the shadow up to date and empty the log (journal idle; nothing without a log). */
void mp_tx_checkpoint(mp_tx_t *t);

void mp_tx_begin(mp_tx_t *t);
int mp_tx_alloc(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out);
int mp_tx_free(mp_tx_t *t, uint64_t offset);
int mp_tx_realloc(mp_tx_t *t, uint64_t offset, uint64_t size, uint64_t align, uint64_t *out);
void mp_tx_reset(mp_tx_t *t);
/* One operation as a whole transaction (begin, the operation, commit): a file pool's
 * alloc and free, in one call. */
int mp_tx_alloc1(mp_tx_t *t, uint64_t size, uint64_t align, uint64_t *out);
int mp_tx_free1(mp_tx_t *t, uint64_t offset);
/* Commit and carry on in a new transaction when fewer than `ops` operations or
 * `undo` undo records are left (loops call it between their steps, at points where
 * the state is consistent).  The test inline (it stores nothing), the rest in
 * journal.c. */
void mpi_tx_renew(mp_tx_t *t);
static inline void mp_tx_room(mp_tx_t *t, unsigned ops, unsigned undo)
{
    if (t->nops + ops > MP_TX_OPS || t->j->nundo + undo > MP_JOURNAL_UNDO) mpi_tx_renew(t);
}
void mp_tx_commit(mp_tx_t *t);
/* Give the transaction up (a call that failed half-way, nothing committed in it since
 * mp_tx_begin): the state back from the shadow (with the log's committed entries
 * replayed on it: O(entries)), the undo log applied backwards. */
void mp_tx_abort(mp_tx_t *t);
/* Undo-logged stores of words outside the strategy state (lock held): mp_jset64/32,
 * inline in journal_log.h (for the core files). */

/* Bring an interrupted call to an end: MP_TX_ACTIVE (rolled back), MP_TX_COMMITTED
 * (rolled forward) or MP_TX_IDLE (nothing to do); MP_ECORRUPT with the reason in msg
 * when a redo log's replay fails (a shadow that fails its check, an entry whose
 * replay does not give what it logged). */
int mp_tx_recover(mp_tx_t *t, char *msg, size_t msglen);
static inline int mp_tx_pending(const mp_tx_t *t)
{
    return MP_TX_PHASE(__atomic_load_n(&t->j->phase, __ATOMIC_ACQUIRE)) != MP_TX_IDLE;
}

#endif /* MEMPOOL_JOURNAL_H */
