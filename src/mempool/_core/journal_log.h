/*
 * journal_log.h -- the journal's ordering stores and its undo-logged stores, inline
 * (journal.h has the protocol): the core files that write journaled words (journal.c,
 * shared.c's registry, named.c's directory) include it after internal.h.  Inline
 * because a shared pool's alloc+free pair logged a dozen registry words (5 since the
 * redo log): as calls they were ~11 % of the pair (bench/journal_before_after.sh,
 * shared 4 KiB TLSF: 162.8 -> 144.8 ns).
 */
#ifndef MEMPOOL_JOURNAL_LOG_H
#define MEMPOOL_JOURNAL_LOG_H

#include <stdint.h>
#include <string.h>

#include "internal.h"
#include "journal.h"

/* The stores that order the protocol (journal.c's head comment): every store before one
 * reaches memory before it, and it before every store after it.  That is store-store
 * order only, which is all a kill point needs (nothing here is a load that must wait
 * for a store to be seen: the lock orders the processes).  A release store and a
 * release fence give exactly that: plain moves on x86-64 (TSO keeps stores in order;
 * the compiler is kept from moving any across), a dmb on AArch64.  (A seq_cst store,
 * as before, drained the store buffer each time: an xchg, ~20 cycles, five or six per
 * alloc+free pair of a file pool.) */
static inline void mpi_publish(uint64_t *word, uint64_t v)
{
    MPI_FAULT_POINT(word);
    __atomic_store_n(word, v, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}

/* Log the aligned 64-bit word at w (its offset and old value), then publish the count:
 * the record is complete before the caller's store can happen. */
static inline void mpi_jlog(mp_journal_t *j, const char *w)
{
    if (!MP_JOURNAL_ON) return;
    uint64_t n = j->nundo;
    mpi_assert(n < MP_JOURNAL_UNDO); /* callers keep room (mp_tx_room) */
    if (n >= MP_JOURNAL_UNDO) return;
    j->undo[n].off = (int64_t)(w - (char *)j);
    memcpy(&j->undo[n].old, w, 8); /* (memcpy: the word may hold other types) */
    mpi_publish(&j->nundo, n + 1);
}

/* Undo-logged stores of words outside the strategy state (lock held). */
static inline void mp_jset64(mp_journal_t *j, uint64_t *word, uint64_t v)
{
    mpi_jlog(j, (const char *)word);
    *word = v;
}

static inline void mp_jset32(mp_journal_t *j, uint32_t *word, uint32_t v)
{
    /* the aligned 64-bit word that holds it is logged (both halves are locked state) */
    mpi_jlog(j, (const char *)((uintptr_t)word & ~(uintptr_t)7));
    *word = v;
}

#endif /* MEMPOOL_JOURNAL_LOG_H */
