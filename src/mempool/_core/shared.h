/*
 * shared.h -- the C API of what a pool shared by several processes keeps beside its
 * strategy state (shared.c): a robust process-shared lock and the block registry
 * (entries, references, tags, the reclaim of a dead process's ranges).  Used by the
 * binding's shared pools; not part of the strategies' API (mempool.h), which knows
 * nothing of processes.  Names: mp_shared_* (the control block and the lock),
 * mp_reg_* (the registry's entries), mp_ref_* (references), mp_entry_* (an entry's
 * state word); see internal.h for the whole prefix scheme.
 */
#ifndef MEMPOOL_SHARED_H
#define MEMPOOL_SHARED_H

#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include "mempool.h"

typedef struct mp_shared_ctl mp_shared_ctl_t;
#define MP_HOLDERS 3
typedef struct mp_entry {
    uint64_t offset; /* the range; UINT64_MAX while the entry is unused      */
    uint64_t tag;    /* unique per handing-out: handles name (offset, tag)   */
    uint64_t size;   /* bytes asked for; unused entries: the next free one   */
    uint64_t state;  /* atomic: owner pid << 32 | owner_ref << 31 | refs     */
    struct {
        uint32_t pid, count;           /* borrowed references by process (lock held) */
    } holder[MP_HOLDERS];
    uint32_t overflow;                 /* borrowed references beyond the holders  */
    uint32_t pins;                     /* 1 + the first of its pinned lease slots,
                                          0: none (shared.c)                      */
} mp_entry_t; /* one cache line: processes working on their own entries share none */

/* The lock + registry + lease table area: 0 when a size is invalid (max_entries and
 * max_leases in [1, 2**28]; lease_timeout_ns in [1, MP_LEASE_TIMEOUT_MAX]). */
#define MP_LEASE_TIMEOUT_MAX ((uint64_t)1 << 62)
uint64_t mp_shared_ctl_size(uint64_t max_entries, uint64_t max_leases);
int mp_shared_ctl_init(mp_shared_ctl_t *c, uint64_t max_entries, uint64_t max_leases,
                       uint64_t lease_timeout_ns);
/* This process's pid namespace (the inode of /proc/self/ns/pid; 0 when not known), and
 * the one the segment's creator recorded (0: an older segment, or not known): pids in
 * the registry mean something only to processes of that namespace. */
uint64_t mp_pidns(void);
uint64_t mp_shared_pidns(const mp_shared_ctl_t *c);
int mp_shared_check_layout(const mp_shared_ctl_t *c, uint64_t len, char *msg, size_t msglen);
/* The whole check (layout, strategy, registry against the strategy); lock held. */
int mp_shared_check(mp_shared_ctl_t *c, uint64_t len, const mp_ops_t *ops, void *st,
                    uint64_t st_len, char *msg, size_t msglen);
/* Locking: trylock (0, EBUSY, EOWNERDEAD or an error); lock_wait blocks until it has
 * the lock, or returns MP_ECORRUPT with msg set when the lock word names a holder that
 * can never release it (see "who holds the lock" in shared.c); then locked() with the
 * rc verifies/repairs after a dead owner and returns MP_OK with the lock held, or
 * MP_ECORRUPT with msg and the lock not held (a corrupt pool, or a lock word no valid
 * mutex has: every error of taking it). */
int mp_shared_trylock(mp_shared_ctl_t *c);
int mp_shared_lock_wait(mp_shared_ctl_t *c, char *msg, size_t msglen);
int mp_shared_locked(mp_shared_ctl_t *c, int rc, mp_tx_t *t, char *msg, size_t msglen);
/* What mp_shared_locked does after a death (lock held): the interrupted call rolled
 * back or forward (journal.h), the registry checked and recounted. */
int mp_shared_recover(mp_shared_ctl_t *c, mp_tx_t *t, char *msg, size_t msglen);
/* Undo the transaction under way (lock held): the state, the registry (its index
 * rebuilt) and every logged word as when it began; a new, empty one begins. */
void mp_shared_abort(mp_tx_t *t); /* (t bound: mp_shared_bind_tx) */
/* The journal of the locked calls: every state change under the lock is a
 * transaction over the strategy state and its shadow (t), and every registry word
 * those calls write that a rollback needs is undo-logged (not the free list, the
 * count, nor a new entry's words but its offset: a rollback rebuilds those from the
 * offsets) (mp_reg_*, mp_ref_take, mp_ref_release_borrowed,
 * mp_shared_reclaim: call them inside a transaction; the pool's own begin/commit are
 * around its lock). */
mp_journal_t *mp_shared_journal(mp_shared_ctl_t *c);
/* Bind t to the control block c of len bytes (the length mp_shared_check_layout
 * accepted): t's undo log is kept off the block's lock, its message and the journal
 * itself (no call logs those words, so a record that names one is crafted:
 * mp_tx_validate refuses it, a recovery skips it), and a roll-back of t rebuilds the
 * registry's unlogged words (its index, count and free list) from the logged ones
 * before the phase leaves ACTIVE (journal.h: mp_tx_t.undone), once the size fields
 * that bound the rebuild are checked against len.  b holds the binding: it must live
 * as long as t.  Every transaction over a registry is bound so (mp_shared_recover and
 * mp_shared_abort rely on it). */
typedef struct mp_shared_bind {
    mp_shared_ctl_t *c;
    uint64_t len;
} mp_shared_bind_t;
void mp_shared_bind_tx(mp_shared_bind_t *b, mp_shared_ctl_t *c, uint64_t len, mp_tx_t *t);
/* Is there an unused entry (mp_reg_add would succeed)? */
int mp_reg_has_room(const mp_shared_ctl_t *c);
/* The registry is reserved for max_entries and committed as needed (shared.c): a new one
 * commits MP_REG_COMMIT0 entries (at most max_entries), and each growth twice as many.
 * mp_shared_ctl_reserved: the two spans of a new control area (offset, length, offset,
 * length from its start: the index's and the entries' reserved tails) that nothing
 * touches until the registry grows into them, so that the segment need not allocate
 * them.  mp_reg_grow_span: the two spans the next growth will touch (allocate them
 * first), MP_ENONODES when max_entries are committed.  mp_reg_grow (lock held, in a
 * transaction): commits them (undo-logged; the index is rebuilt at its new size). */
#define MP_REG_COMMIT0 256u
void mp_shared_ctl_reserved(uint64_t max_entries, uint64_t out[4]);
int mp_reg_grow_span(const mp_shared_ctl_t *c, uint64_t out[4]);
int mp_reg_grow(mp_shared_ctl_t *c);
/* The bytes of the control area in use: all but the reserve not grown into yet. */
uint64_t mp_shared_used_bytes(const mp_shared_ctl_t *c);
/* Entries [0, top) were ever handed out: any other index names no entry (lock held). */
uint32_t mp_reg_top(const mp_shared_ctl_t *c);
/* Entries mp_reg_add can hand out before the registry must grow. */
uint64_t mp_reg_room(const mp_shared_ctl_t *c);
void mp_shared_unlock(mp_shared_ctl_t *c);
/* Let the lock go right after taking it (rc: what taking it returned), before
 * mp_shared_locked: nothing was read or written (a pending journal stays pending for the
 * next taker). */
void mp_shared_unlock_raw(mp_shared_ctl_t *c, int rc);
/* entries, max_entries, serial, committed, lock_waits, lock_wait_ns, recoveries, repaired */
void mp_shared_stats(const mp_shared_ctl_t *c, uint64_t out[8]);
/* n fresh tags (the first is returned); any time, atomic. */
uint64_t mp_shared_reserve_tags(mp_shared_ctl_t *c, uint64_t n);
/* The registry's index and entries (lock held). */
uint32_t mp_reg_lookup(mp_shared_ctl_t *c, uint64_t offset); /* entry index or MP_NIL */
mp_entry_t *mp_reg_entry(mp_shared_ctl_t *c, uint32_t i);
int mp_reg_add(mp_shared_ctl_t *c, uint64_t offset, uint64_t size, uint32_t owner, uint64_t tag,
               uint32_t *out); /* refs 1, owner_ref; MP_ENONODES when full */
/* pool.named's ranges (a name's data, its record, the directory's table): an entry
 * whose one reference is the name's, borrowed by MP_NAME_PID (no process: reclaim
 * never releases it; views borrow more, and the name goes only when refs is 1). */
#define MP_NAME_PID 0u
int mp_reg_add_named(mp_shared_ctl_t *c, uint64_t offset, uint64_t size, uint64_t tag,
                     uint32_t *out);
void mp_reg_drop(mp_shared_ctl_t *c, uint32_t i);
void mp_reg_move(mp_shared_ctl_t *c, uint32_t i, uint64_t offset, uint64_t size);
int mp_reg_walk(mp_shared_ctl_t *c, int (*fn)(void *ctx, uint32_t i, mp_entry_t *e), void *ctx);
/* References.  refs == owner_ref + the borrowed counts (holders + overflow).
 * take (lock held): one more, borrowed by pid, when tag matches (0: any) and the
 * range is handed out (refs > 0); when it loses a race with a reuse and its undo
 * dropped the last reference, *dispose says the caller must drop the entry and free
 * the range.  release (any time) gives back the owner's own reference:
 * 1 when it was the last (the entry is then the caller's, refs 0: cache it or
 * dispose of it under the lock), 0 when others remain, -1 when there was none.
 * release_borrowed (lock held) gives back one of pid's borrowed references, with the
 * same results.  reuse (any time, the caller's cached entry): a new tag, then refs 1. */
int mp_ref_take(mp_shared_ctl_t *c, uint32_t i, uint64_t tag, uint32_t pid, int *dispose);
int mp_ref_release(mp_shared_ctl_t *c, uint32_t i, uint32_t pid, int owner_handle);
int mp_ref_release_borrowed(mp_shared_ctl_t *c, uint32_t i, uint32_t pid);
int mp_ref_reuse(mp_shared_ctl_t *c, uint32_t i, uint32_t pid, uint64_t tag, uint64_t size);
uint32_t mp_entry_refs(const mp_entry_t *e);
uint32_t mp_entry_owner(const mp_entry_t *e);
/* Dispose of what a dead process held (lock held): its own references and the ones
 * it borrowed are released; ranges left without one (and ranges it cached) are
 * freed (returned).  Borrowed references beyond MP_HOLDERS processes per range are
 * not attributed and stay. */
uint64_t mp_shared_reclaim(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid, uint64_t *released);
/* ... for every pid gone(ctx, pid) says yes to (MP_NAME_PID is never asked about), in
 * one pass over the registry. */
uint64_t mp_shared_reclaim_if(mp_shared_ctl_t *c, mp_tx_t *t, int (*gone)(void *ctx, uint32_t pid),
                              void *ctx, uint64_t *released);
/* Every pid the registry names (lock held): each entry's owner, the processes in its
 * holders, those of pinned lease slots; fn(ctx, pid) once per mention (pids repeat;
 * MP_NAME_PID is left out); a non-zero return from fn stops the walk and is returned. */
int mp_shared_pids(mp_shared_ctl_t *c, int (*fn)(void *ctx, uint32_t pid), void *ctx);
/* Leases: the reference a pickled handle carries in flight (see shared.c's head).
 * add (lock held): one more reference of entry i (tag must match, refs > 0) held by a
 * new lease, *token names it (gen << 32 | slot); when the table is full, due leases
 * are released first; MP_ENOTALLOC (stale), MP_ENONODES (full).  A reference given
 * back meanwhile by a lost race is disposed of here (like mp_ref_take's *dispose).
 * adopt (lock held): the lease `token` of entry i / tag becomes a reference borrowed
 * by pid (refs unchanged); MP_ENOTALLOC when there is no such lease (adopted already,
 * expired).  expire (lock held): when the earliest deadline has passed, release every
 * lease past its own; ranges left without a reference are freed; returns how many
 * leases were released.  due (any time, a hint): some lease may be past its deadline.
 * stats: leases in flight, max_leases, leases expired so far, lease_timeout_ns. */
int mp_lease_add(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t i, uint64_t tag, uint32_t pid,
                 uint64_t *token);
int mp_lease_adopt(mp_shared_ctl_t *c, uint64_t token, uint32_t i, uint64_t tag, uint32_t pid);
uint64_t mp_lease_expire(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid);
/* ... as if the clock read `now` (CLOCK_MONOTONIC ns): the fault-injection test */
uint64_t mp_lease_expire_at(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid, uint64_t now);
int mp_lease_due(const mp_shared_ctl_t *c);
void mp_lease_stats(const mp_shared_ctl_t *c, uint64_t out[4]);

#endif /* MEMPOOL_SHARED_H */
