/*
 * shared.c -- what a pool shared by several processes keeps beside the strategy
 * state: a robust process-shared lock and the block registry.  (POSIX threads and
 * GCC __atomic builtins; no Python.h.)
 *
 * Layout (inside the shared segment, after the strategy state):
 *
 *   +-----------------+-----------------------------+------------------------------+---
 *   | mp_shared_ctl_t | uint32_t index[1 << bits_max]| mp_entry_t entries[max]     |
 *   | magic, counters,| offset -> entry (linear     | never move; unused ones      |
 *   | pthread_mutex_t | probing, backward shift)    | below top form a free list   |
 *   +-----------------+-----------------------------+------------------------------+---
 *   ---+--------------------------------+
 *      | mp_lease_t leases[lease_max]   |
 *      | references in flight; unused   |
 *      | ones form a free list          |
 *   ---+--------------------------------+
 *
 * Reserved, committed as needed.  The index and the entries are reserved for max_entries
 * (address space and a sparse segment), and only a prefix of each is in use: the index's
 * first 1 << bits slots, the entries below `committed` (their pages allocated when the
 * registry grew to them: mp_reg_grow_span, then mp_reg_grow) of which those below `top`
 * were ever handed out.  Nothing reads or writes beyond those prefixes, so the pages
 * past them stay unallocated: a registry costs what its live entries need, and
 * max_entries is a cap, not a size paid up front.  Growing doubles `committed` (and the
 * index with it: 2 * committed <= 1 << bits, so the index is never more than half
 * full) inside a transaction: the two words are undo-logged, and the index, rebuilt at
 * the new size, is rebuilt again from the entries by a rollback.  Entries never move,
 * so the lock-free paths below keep working on theirs while the registry grows.
 *
 * One entry per live range of the strategy:
 *   offset  the range                    tag   unique per handing-out (see tags)
 *   size    bytes asked for (information)
 *   state   one atomic word: owner pid (bits 32..63) | owner_ref (bit 31) | refs
 *           refs       handles alive in all processes
 *           owner      the process that allocated the range (or caches it)
 *           owner_ref  the owner's own Block (from alloc) holds one of the refs
 *   holder  who borrowed the others: (pid, count) for up to MP_HOLDERS processes;
 *           a further borrower's reference is a pinned slot of the lease table
 *           (below), and only when half that table is pinned, the table is full or
 *           the call's journal is does it go into overflow, counted under no pid.  Borrowing (a handle unpickled,
 *           block_at) and giving back a borrowed reference take the lock; so
 *           reclaim(pid) knows what a dead process held, not only what it allocated.
 * A handle names (offset, tag): a handle to a freed or reused range finds no
 * entry, another tag, or refs == 0, and is refused instead of aliased.
 *
 * Leases.  A handle pickled (mp_lease_add) takes a reference that travels with it:
 * a lease slot (entry, tag, deadline, gen) counted in the entry's refs but in no
 * holder, so the range stays live while the handle is in flight, whatever its
 * sender does meanwhile (free its own handle, exit, be reclaimed).  The pickle
 * carries the lease's token (gen << 32 | slot); the receiver that unpickles it
 * adopts the reference (mp_lease_adopt: the slot is freed and the reference becomes
 * one the receiver borrowed; refs unchanged).  A lease not adopted by its deadline
 * (ctl->lease_timeout_ns after it was taken: a lost message, a dead receiver) is
 * released by the next locked call that notices (mp_lease_expire): ctl->lease_due
 * is a lower bound of every lease's deadline (not raised when a lease is adopted,
 * set exactly by each expiry pass), so the common path costs one comparison, and a
 * pass over the table runs only when some deadline may have passed.  reclaim(pid)
 * leaves leases alone: a sender commonly exits before its receiver unpickles.
 *
 * Pinned slots.  A lease slot whose deadline is PINNED is not in flight: it records
 * a reference borrowed by `pid` beyond the entry's MP_HOLDERS holders (a fourth
 * process's handle); at most half the table is pinned, so pins never leave the
 * handles in flight without room.  It never expires and has no token (adopt refuses
 * it); pid's release of a borrowed reference gives it back when pid is in no holder,
 * and reclaim(pid) releases pid's pinned slots like its holder counts.  ctl->pinned
 * counts them (leases - pinned are in flight).  An entry's pinned slots form a chain
 * (entry.pins = 1 + the first, slot.next the next, MP_NIL ends it), so a release looks
 * at that entry's pins, not the whole table.
 *
 * Per-process caches.  When a process releases the last reference to a range it
 * allocated itself, it may keep the range (still allocated in the strategy, its
 * entry with refs == 0 and owner == its pid) and hand it out again later without
 * the lock: a new tag first, then refs = 1 (mp_ref_reuse).  Entries never move
 * (only index slots do), so these lock-free transitions of a process's own entries
 * cannot race with the locked work of others: every transition is one CAS on the
 * state word, and the locked paths (handles, reclaim) act only on refs > 0 or on
 * dead owners.
 *
 * Tags.  ctl->serial is bumped by reservations of TAG_CHUNK tags (one atomic add per
 * chunk); a process hands out its chunk alone, so tags are unique without a shared
 * write per allocation, and every tag in use is <= serial.
 *
 * The mutex is PTHREAD_PROCESS_SHARED + PTHREAD_MUTEX_ROBUST: when its owner dies,
 * the next taker gets EOWNERDEAD, verifies the strategy state and the registry,
 * repairs what a half-done call left in the registry (entries without a live range,
 * live ranges without an entry), and marks the mutex consistent; when the strategy
 * state itself is broken the pool is marked corrupt and every later call fails with
 * MP_ECORRUPT.  No one waits on a dead owner.
 *
 * Invariants (mp_shared_check, lock held):
 *  S1. magic, bits_max and max_entries agree with the size the segment gives;
 *      top <= committed <= max_entries; 4 <= bits <= bits_max; 2 * committed <= 1 << bits.
 *  S2. used entries + the free list == top; entries == used entries; every
 *      used entry is found from its offset through the index, and every index slot
 *      names a used entry; tags are non-zero and <= serial; refs == 0 only with an
 *      owner (a cached range); refs == owner_ref + holder counts + overflow + the
 *      leases that name the entry.
 *  S3. every entry's offset is a live range of the strategy, and the strategy has
 *      exactly `entries` live ranges.
 *  S4. leases: lease_max, the table's size and lease_timeout_ns agree with the
 *      segment (layout); every used slot (tag != 0) names a used entry with its tag,
 *      has gen != 0 and a deadline in [lease_due, now + lease_timeout_ns]; used slots
 *      + the free list == lease_max; used slots == leases.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "journal.h"
#include "journal_log.h"
#include "shared.h"

#define CTL_MAGIC 0x3353504dU /* "MPS3": the registry reserved and committed as needed */
#define UNUSED UINT64_MAX
#define REFS_MASK 0x7fffffffull
#define OWNER_REF (1ull << 31)
#define PINNED UINT64_MAX /* a lease slot's deadline: a borrowed reference, not in flight */

struct mp_shared_ctl {
    uint32_t magic;        /* CTL_MAGIC                                      */
    uint32_t bits;         /* the index has 1 << bits slots                  */
    uint32_t max_entries;  /* the entry table's size                         */
    uint32_t entries;      /* entries in use                                 */
    uint32_t corrupt;      /* a dead owner left a broken strategy state      */
    uint32_t recoveries;   /* EOWNERDEAD takeovers so far                    */
    uint64_t serial;       /* tags reserved so far (atomic)                  */
    uint32_t free_head;    /* first unused entry below top (linked through .size) */
    uint32_t top;          /* entries [0, top) were ever used; the rest were never
                              touched (pages of the segment not even allocated)  */
    uint64_t lock_waits;   /* acquisitions that found the lock taken         */
    uint64_t lock_wait_ns; /* time spent waiting for it                      */
    uint64_t repaired;     /* registry repairs after a dead owner            */
    union {
        pthread_mutex_t mutex;
        uint8_t room[64];
    } lock;
    char why[64];          /* what the check found when the pool was marked corrupt */
    mp_journal_t journal;  /* the locked calls' transactions (journal.h): the strategy
                              state's shadow copy, and the undo log of the registry */
    /* leases (see the head comment), one cache line */
    uint32_t lease_max;        /* the lease table's size                           */
    uint32_t leases;           /* leases in flight (used slots)                    */
    uint32_t lease_free;       /* first unused slot (linked through .next)         */
    uint32_t pinned;           /* of them, pinned slots (borrowed, not in flight)  */
    uint64_t lease_timeout_ns; /* a lease's lifetime in flight                     */
    uint64_t lease_due;        /* <= every used slot's deadline; UINT64_MAX: none  */
    uint64_t leases_expired;   /* leases released by their deadline so far         */
    uint64_t pidns;            /* the creator's pid namespace (the inode of
                                  /proc/self/ns/pid; 0: not known, an older segment) */
    uint32_t committed;    /* entries whose pages are allocated: top <= committed */
    uint32_t bits_max;     /* bits_for(max_entries): the index's reserved room    */
    uint64_t pad2;
};

/* A reference in flight: used while tag != 0 (written last when taken, first when
 * given back). */
typedef struct mp_lease {
    uint64_t tag;      /* the handle's tag; 0 while the slot is unused                */
    uint64_t deadline; /* CLOCK_MONOTONIC ns after which it is released               */
    uint32_t entry;    /* the registry entry whose reference it holds                 */
    uint32_t gen;      /* bumped each time the slot is taken: token = gen << 32 | slot */
    uint32_t pid;      /* who pickled it (information only: reclaim leaves it alone);
                          a pinned slot's: who borrowed it (reclaim releases it)     */
    uint32_t next;     /* unused slots: the next unused one                           */
} mp_lease_t;
_Static_assert(sizeof(pthread_mutex_t) <= 64, "the mutex fits its room");
_Static_assert(sizeof(struct mp_shared_ctl) % 64 == 0, "tables start on a cache line");
_Static_assert(sizeof(mp_entry_t) == 64, "an entry is a cache line");
_Static_assert(sizeof(mp_lease_t) == 32, "two leases a cache line");

static uint32_t *index_of(mp_shared_ctl_t *c) { return (uint32_t *)(c + 1); }
mp_journal_t *mp_shared_journal(mp_shared_ctl_t *c) { return &c->journal; }

static int registry_undone(void *arg, char *msg, size_t msglen);

void mp_shared_bind_tx(mp_shared_bind_t *b, mp_shared_ctl_t *c, uint64_t len, mp_tx_t *t)
{
    b->c = c;
    b->len = len;
    t->out_lo = (char *)&c->lock;        /* the mutex, why[], the journal: one span */
    t->out_hi = (char *)(&c->journal + 1);
    t->undone = registry_undone;
    t->undone_arg = b;
}

/* Undo-logged stores of the registry's words (lock held, inside a transaction).  The
 * index is not logged: a rollback rebuilds it from the entries (rebuild()). */
/* (a word that already holds the value is neither logged nor written) */
#define J64(c, lv, v)                                                                       \
    do {                                                                                    \
        uint64_t j_v_ = (v);                                                                \
        if ((lv) != j_v_) mp_jset64(&(c)->journal, &(lv), j_v_);                            \
    } while (0)
#define J32(c, lv, v)                                                                       \
    do {                                                                                    \
        uint32_t j_v_ = (v);                                                                \
        if ((lv) != j_v_) mp_jset32(&(c)->journal, &(lv), j_v_);                            \
    } while (0)
static uint64_t index_bytes(uint32_t bits)
{
    return (((uint64_t)1 << bits) * sizeof(uint32_t) + 63) & ~(uint64_t)63;
}

static mp_entry_t *entries_of(mp_shared_ctl_t *c)
{
    return (mp_entry_t *)((char *)(c + 1) + index_bytes(c->bits_max));
}

static mp_lease_t *leases_of(mp_shared_ctl_t *c) { return (mp_lease_t *)(entries_of(c) + c->max_entries); }

static uint32_t bits_for(uint64_t max_entries)
{
    uint32_t bits = 4;
    while (((uint64_t)1 << bits) < 2 * max_entries) bits++;
    return bits;
}

uint64_t mp_shared_ctl_size(uint64_t max_entries, uint64_t max_leases)
{
    if (max_entries == 0 || max_entries > ((uint64_t)1 << 28)) return 0;
    if (max_leases == 0 || max_leases > ((uint64_t)1 << 28)) return 0;
    return sizeof(mp_shared_ctl_t) + index_bytes(bits_for(max_entries)) +
           max_entries * sizeof(mp_entry_t) + ((max_leases * sizeof(mp_lease_t) + 63) & ~(uint64_t)63);
}

/* The entries a new registry commits (MP_REG_COMMIT0, at most max_entries). */
static uint32_t commit0(uint64_t max_entries)
{
    return (uint32_t)(max_entries < MP_REG_COMMIT0 ? max_entries : MP_REG_COMMIT0);
}

/* What a registry of a reserve for 1 << bits_max index slots touches when it goes from
 * `from` committed entries and 1 << bits index slots to `to` and 1 << bits_to: the tail
 * of the index's prefix and of the entries (offset, length, offset, length from the
 * control block's start). */
static void spans(uint32_t bits_max, uint32_t bits, uint32_t bits_to, uint64_t from,
                  uint64_t to, uint64_t out[4])
{
    uint64_t en = sizeof(mp_shared_ctl_t) + index_bytes(bits_max);
    out[0] = sizeof(mp_shared_ctl_t) + index_bytes(bits);
    out[1] = index_bytes(bits_to) - index_bytes(bits);
    out[2] = en + from * sizeof(mp_entry_t);
    out[3] = (to - from) * sizeof(mp_entry_t);
}

void mp_shared_ctl_reserved(uint64_t max_entries, uint64_t out[4])
{
    /* what a new registry leaves for its growths: all it reserves beyond its first commit */
    uint32_t bits_max = bits_for(max_entries);
    spans(bits_max, bits_for(commit0(max_entries)), bits_max, commit0(max_entries), max_entries,
          out);
}

static void leases_init(mp_shared_ctl_t *c, uint64_t max_leases, uint64_t timeout_ns)
{
    c->lease_max = (uint32_t)max_leases;
    c->leases = 0;
    c->pinned = 0;
    c->lease_timeout_ns = timeout_ns;
    c->lease_due = UINT64_MAX;
    c->leases_expired = 0;
    mp_lease_t *l = leases_of(c);
    memset(l, 0, max_leases * sizeof *l);
    for (uint32_t k = 0; k < c->lease_max; k++) l[k].next = k + 1 < c->lease_max ? k + 1 : MP_NIL;
    c->lease_free = 0;
}

uint64_t mp_pidns(void)
{
    struct stat sb;
    return stat("/proc/self/ns/pid", &sb) == 0 ? (uint64_t)sb.st_ino : 0;
}

uint64_t mp_shared_pidns(const mp_shared_ctl_t *c) { return c->pidns; }

int mp_shared_ctl_init(mp_shared_ctl_t *c, uint64_t max_entries, uint64_t max_leases,
                       uint64_t lease_timeout_ns)
{
    if (!mp_shared_ctl_size(max_entries, max_leases) || lease_timeout_ns == 0 ||
        lease_timeout_ns > MP_LEASE_TIMEOUT_MAX)
        return MP_EINVAL;
    memset(c, 0, sizeof *c);
    mp_journal_init(&c->journal);
    c->magic = CTL_MAGIC;
    c->max_entries = (uint32_t)max_entries;
    c->bits_max = bits_for(max_entries);
    c->committed = commit0(max_entries);
    c->bits = bits_for(c->committed);
    for (uint64_t s = 0, n = (uint64_t)1 << c->bits; s < n; s++) index_of(c)[s] = MP_NIL;
    c->top = 0; /* (the entries are written when first handed out: mp_reg_add) */
    c->free_head = MP_NIL;
    c->pidns = mp_pidns();
    leases_init(c, max_leases, lease_timeout_ns);
    pthread_mutexattr_t a;
    if (pthread_mutexattr_init(&a)) return MP_EINVAL;
    int rc = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) ||
             pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) ||
             pthread_mutex_init(&c->lock.mutex, &a);
    pthread_mutexattr_destroy(&a);
    return rc ? MP_EINVAL : MP_OK;
}

/* CLOCK_MONOTONIC: one clock for every process of the host (lock waits, deadlines) */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- state words ----------------------------------------------------------------- */
static inline uint64_t st_load(const mp_entry_t *e) { return __atomic_load_n(&e->state, __ATOMIC_ACQUIRE); }
static inline int st_cas(mp_entry_t *e, uint64_t *old, uint64_t new_)
{
    MPI_FAULT_POINT(&e->state);
    return __atomic_compare_exchange_n(&e->state, old, new_, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint64_t mk(uint32_t owner, int owner_ref, uint64_t refs)
{
    return ((uint64_t)owner << 32) | (owner_ref ? OWNER_REF : 0) | refs;
}
uint32_t mp_entry_refs(const mp_entry_t *e) { return (uint32_t)(st_load(e) & REFS_MASK); }
uint32_t mp_entry_owner(const mp_entry_t *e) { return (uint32_t)(st_load(e) >> 32); }

uint64_t mp_shared_reserve_tags(mp_shared_ctl_t *c, uint64_t n)
{
    MPI_FAULT_POINT(&c->serial);
    return __atomic_add_fetch(&c->serial, n, __ATOMIC_ACQ_REL) - n + 1;
}

/* ---- the index (lock held) --------------------------------------------------------- */
static uint64_t home(uint64_t offset, uint32_t bits)
{
    return (offset * 0x9E3779B97F4A7C15ull) >> (64 - bits);
}

uint32_t mp_reg_lookup(mp_shared_ctl_t *c, uint64_t offset)
{
    uint32_t *ix = index_of(c);
    mp_entry_t *e = entries_of(c);
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(offset, c->bits);
    for (uint64_t n = 0; n <= mask; n++, s = (s + 1) & mask) {
        uint32_t i = ix[s];
        if (i == MP_NIL) return MP_NIL;
        if (i < c->top && e[i].offset == offset) return i;
    }
    return MP_NIL;
}

mp_entry_t *mp_reg_entry(mp_shared_ctl_t *c, uint32_t i) { return &entries_of(c)[i]; }
int mp_reg_has_room(const mp_shared_ctl_t *c)
{
    return c->free_head != MP_NIL || c->top < c->committed;
}

uint64_t mp_shared_used_bytes(const mp_shared_ctl_t *c)
{
    return sizeof *c + index_bytes(c->bits) + (uint64_t)c->committed * sizeof(mp_entry_t) +
           (((uint64_t)c->lease_max * sizeof(mp_lease_t) + 63) & ~(uint64_t)63);
}

uint32_t mp_reg_top(const mp_shared_ctl_t *c) { return c->top; }

uint64_t mp_reg_room(const mp_shared_ctl_t *c)
{
    return c->entries < c->committed ? c->committed - c->entries : 0;
}

/* (Both walks are bounded: the index is never more than half full, but a crafted one
 * may be full, or lack the entry a lease expiry drops before check() has run.) */
static void index_insert(mp_shared_ctl_t *c, uint32_t i)
{
    uint32_t *ix = index_of(c);
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(entries_of(c)[i].offset, c->bits);
    for (uint64_t n = 0; ix[s] != MP_NIL; s = (s + 1) & mask)
        if (++n > mask) return; /* full: crafted (check() reports the entry unindexed) */
    ix[s] = i;
}

static void index_remove(mp_shared_ctl_t *c, uint32_t i)
{
    uint32_t *ix = index_of(c);
    mp_entry_t *e = entries_of(c);
    uint64_t mask = ((uint64_t)1 << c->bits) - 1, s = home(e[i].offset, c->bits);
    for (uint64_t n = 0; ix[s] != i; s = (s + 1) & mask)
        if (ix[s] == MP_NIL || ++n > mask) return; /* not indexed: crafted (check() says) */
    uint64_t hole = s;
    for (;;) { /* backward shift: every probe chain stays unbroken */
        s = (s + 1) & mask;
        uint32_t j = ix[s];
        if (j == MP_NIL) break;
        uint64_t h = home(e[j].offset, c->bits);
        if (((s - h) & mask) >= ((s - hole) & mask)) {
            ix[hole] = j;
            hole = s;
        }
    }
    ix[hole] = MP_NIL;
}

int mp_reg_add(mp_shared_ctl_t *c, uint64_t offset, uint64_t size, uint32_t owner, uint64_t tag,
               uint32_t *out)
{
    /* Only two words are undo-logged: the entry's offset (UNUSED while it is free) and
     * `top`.  A rollback rebuilds the free list, its links (a free entry's size) and
     * the count from the offsets below top (rebuild()), and a free entry's other words
     * are read by no one (its tag is one no handle has: it was drawn by the call that
     * is rolled back), so they are plain stores: each is written again by the next add.
     * (An add logs 1 record, 2 for an entry never used, where it logged 5-6; with the
     * drop's 4, a pair 5 instead of 11-12.) */
    uint32_t i = c->free_head;
    mp_entry_t *e;
    if (i != MP_NIL) {
        e = &entries_of(c)[i];
        c->free_head = (uint32_t)e->size;
    } else if (c->top < c->committed) { /* one never used (its words are zero, or what
                                           a rollback left: each is written below) */
        i = c->top;
        e = &entries_of(c)[i];
        J32(c, c->top, i + 1);
    } else {
        return MP_ENONODES;
    }
    e->size = size;
    e->tag = tag;
    for (int k = 0; k < MP_HOLDERS; k++) /* (an empty slot is count 0: its pid is stale) */
        e->holder[k].count = 0;
    e->overflow = 0;
    e->pins = 0;
    e->state = mk(owner, 1, 1); /* a free entry: no one else touches its word */
    J64(c, e->offset, offset);  /* (its record is published before the store: ordered
                                   after the words above, journal_log.h) */
    index_insert(c, i);
    c->entries++;
    *out = i;
    return MP_OK;
}

/* The next growth: twice the committed entries (at most max_entries), and the index
 * bits that keep it at most half full (never fewer than it has). */
static uint32_t grown(const mp_shared_ctl_t *c, uint32_t *bits)
{
    uint64_t n = (uint64_t)c->committed * 2;
    if (n > c->max_entries) n = c->max_entries;
    *bits = bits_for(n) > c->bits ? bits_for(n) : c->bits;
    return (uint32_t)n;
}

int mp_reg_grow_span(const mp_shared_ctl_t *c, uint64_t out[4])
{
    if (c->committed >= c->max_entries) return MP_ENONODES;
    uint32_t bits, n = grown(c, &bits);
    spans(c->bits_max, c->bits, bits, c->committed, n, out);
    return MP_OK;
}

static void reindex(mp_shared_ctl_t *c);

int mp_reg_grow(mp_shared_ctl_t *c)
{
    if (c->committed >= c->max_entries) return MP_ENONODES;
    uint32_t bits, n = grown(c, &bits);
    /* the index first, committed last: every state in between (left by a kill, or seen
     * by an attach's layout check, which runs before it takes the lock) keeps
     * 2 * committed <= 1 << bits (tests/fault checks the layout at each kill point) */
    if (bits > c->bits) { /* the index moves to its larger prefix (not logged: rebuild) */
        J32(c, c->bits, bits);
        reindex(c);
    }
    J32(c, c->committed, n);
    return MP_OK;
}

int mp_reg_add_named(mp_shared_ctl_t *c, uint64_t offset, uint64_t size, uint64_t tag,
                     uint32_t *out)
{
    int rc = mp_reg_add(c, offset, size, MP_NAME_PID, tag, out);
    if (rc != MP_OK) return rc;
    mp_entry_t *e = &entries_of(c)[*out];
    /* the name's reference: borrowed by no process, so no reclaim ever releases it */
    J32(c, e->holder[0].pid, MP_NAME_PID);
    J32(c, e->holder[0].count, 1);
    J64(c, e->state, mk(MP_NAME_PID, 0, 1));
    return MP_OK;
}

void mp_reg_drop(mp_shared_ctl_t *c, uint32_t i)
{
    mp_entry_t *e = &entries_of(c)[i];
    index_remove(c, i);
    J64(c, e->offset, UNUSED);
    J64(c, e->tag, 0);
    J64(c, e->state, 0); /* refs 0 and its dropper's: no one else touches it */
    J64(c, e->size, c->free_head);
    c->free_head = i;    /* (the list and the count: rebuilt by a rollback, see add) */
    c->entries--;
}

void mp_reg_move(mp_shared_ctl_t *c, uint32_t i, uint64_t offset, uint64_t size)
{
    index_remove(c, i);
    J64(c, entries_of(c)[i].offset, offset);
    J64(c, entries_of(c)[i].size, size);
    index_insert(c, i);
}

int mp_reg_walk(mp_shared_ctl_t *c, int (*fn)(void *ctx, uint32_t i, mp_entry_t *e), void *ctx)
{
    mp_entry_t *e = entries_of(c);
    for (uint32_t i = 0; i < c->top; i++)
        if (e[i].offset != UNUSED) {
            int r = fn(ctx, i, &e[i]);
            if (r) return r;
        }
    return MP_OK;
}

/* ---- references (atomic; see the head comment for who may call what when) ---------- */
/* One more reference of e (tag matching, refs > 0), in no holder yet: mp_ref_take's
 * and mp_lease_add's common part; see mp_ref_take for *dispose. */
static int ref_inc(mp_entry_t *e, uint64_t tag, uint32_t pid, int *dispose)
{
    *dispose = 0;
    if (tag && __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) != tag) return MP_ENOTALLOC;
    uint64_t s = st_load(e);
    do {
        if ((s & REFS_MASK) == 0 || (s & REFS_MASK) == REFS_MASK) return MP_ENOTALLOC;
    } while (!st_cas(e, &s, s + 1));
    if (tag && __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) != tag) { /* reused meanwhile */
        uint64_t n;
        s = st_load(e);
        do {
            n = (s & REFS_MASK) == 1 ? mk(pid, 0, 0) : s - 1;
        } while (!st_cas(e, &s, n));
        *dispose = (s & REFS_MASK) == 1;
        return MP_ENOTALLOC;
    }
    return MP_OK;
}

static uint32_t lease_put(mp_shared_ctl_t *c, uint32_t i, uint64_t tag, uint32_t pid,
                          uint64_t deadline);
static void lease_clear(mp_shared_ctl_t *c, uint32_t k);

/* Undo records a pinned slot costs (lease_put, the chain and the count). */
#define PIN_UNDO 14

/* Record a reference borrowed by pid (its count already in the state word): a holder,
 * else a pinned slot, else (the lease table or this call's journal full) overflow. */
static void holder_add(mp_shared_ctl_t *c, mp_entry_t *e, uint32_t pid)
{
    int k, empty = -1;
    for (k = 0; k < MP_HOLDERS; k++) {
        if (e->holder[k].count && e->holder[k].pid == pid) break;
        if (!e->holder[k].count && empty < 0) empty = k;
    }
    if (k < MP_HOLDERS) J32(c, e->holder[k].count, e->holder[k].count + 1);
    else if (empty >= 0) {
        J32(c, e->holder[empty].pid, pid);
        J32(c, e->holder[empty].count, 1);
    } else if (c->lease_free != MP_NIL && c->pinned < c->lease_max / 2 &&
               c->journal.nundo + PIN_UNDO < MP_JOURNAL_UNDO) {
        /* (at most half the table: the rest stays for handles in flight, which would
         * otherwise find it full of pins that never expire) */
        uint32_t k = lease_put(c, (uint32_t)(e - entries_of(c)), e->tag, pid, PINNED);
        J32(c, leases_of(c)[k].next, e->pins ? e->pins - 1 : MP_NIL); /* first of the chain */
        J32(c, e->pins, k + 1);
        J32(c, c->pinned, c->pinned + 1);
    } else J32(c, e->overflow, e->overflow + 1);
}

/* pid's pinned slot of entry i (its chain), or MP_NIL. */
static uint32_t pinned_of(mp_shared_ctl_t *c, uint32_t i, uint32_t pid)
{
    mp_lease_t *l = leases_of(c);
    uint32_t n = 0;
    for (uint32_t k = entries_of(c)[i].pins - 1; k < c->lease_max && n++ < c->lease_max;
         k = l[k].next)
        if (l[k].pid == pid) return k;
    return MP_NIL;
}

/* Take pinned slot k out of its entry's chain and give it back. */
static void unpin(mp_shared_ctl_t *c, uint32_t k)
{
    mp_lease_t *l = leases_of(c);
    mp_entry_t *e = &entries_of(c)[l[k].entry];
    if (e->pins - 1 == k) {
        J32(c, e->pins, l[k].next == MP_NIL ? 0 : l[k].next + 1);
    } else {
        uint32_t p = e->pins - 1, n = 0;
        while (p < c->lease_max && l[p].next != k && n++ < c->lease_max) p = l[p].next;
        if (p < c->lease_max && l[p].next == k) J32(c, l[p].next, l[k].next);
    }
    lease_clear(c, k);
    J32(c, c->pinned, c->pinned - 1);
}

int mp_ref_take(mp_shared_ctl_t *c, uint32_t i, uint64_t tag, uint32_t pid, int *dispose)
{
    mp_entry_t *e = &entries_of(c)[i];
    int rc = ref_inc(e, tag, pid, dispose);
    if (rc == MP_OK) holder_add(c, e, pid);
    return rc;
}

/* One reference less, the last one making the entry pid's (refs 0). */
static int drop_ref(mp_entry_t *e, uint32_t pid)
{
    uint64_t s = st_load(e), n;
    do {
        if ((s & REFS_MASK) == 0) return -1;
        n = (s & REFS_MASK) == 1 ? mk(pid, 0, 0) : s - 1;
    } while (!st_cas(e, &s, n));
    return (s & REFS_MASK) == 1;
}

int mp_ref_release_borrowed(mp_shared_ctl_t *c, uint32_t i, uint32_t pid)
{
    mp_entry_t *e = &entries_of(c)[i];
    int k;
    for (k = 0; k < MP_HOLDERS; k++)
        if (e->holder[k].count && e->holder[k].pid == pid) break;
    uint32_t pin;
    if (k < MP_HOLDERS) J32(c, e->holder[k].count, e->holder[k].count - 1);
    else if ((pin = pinned_of(c, i, pid)) != MP_NIL) unpin(c, pin);
    else if (e->overflow) J32(c, e->overflow, e->overflow - 1);
    else return -1;
    return drop_ref(e, pid);
}

int mp_ref_release(mp_shared_ctl_t *c, uint32_t i, uint32_t pid, int owner_handle)
{
    mp_entry_t *e = &entries_of(c)[i];
    uint64_t s = st_load(e), n;
    (void)owner_handle;
    do {
        uint64_t refs = s & REFS_MASK;
        if (refs == 0 || !(s & OWNER_REF) || (uint32_t)(s >> 32) != pid) return -1;
        /* the last one: the range stays the releaser's, to cache or dispose; no
         * reclaim of a dead former owner can take it from under us */
        n = refs == 1 ? mk(pid, 0, 0) : mk(pid, 0, refs - 1);
    } while (!st_cas(e, &s, n));
    return (s & REFS_MASK) == 1;
}

int mp_ref_reuse(mp_shared_ctl_t *c, uint32_t i, uint32_t pid, uint64_t tag, uint64_t size)
{
    mp_entry_t *e = &entries_of(c)[i];
    uint64_t s = mk(pid, 0, 0);
    if (st_load(e) != s) return MP_EINVAL;
    MPI_FAULT_POINT(&e->tag);
    __atomic_store_n(&e->tag, tag, __ATOMIC_RELEASE); /* before refs: see mp_ref_take */
    e->size = size;
    return st_cas(e, &s, mk(pid, 1, 1)) ? MP_OK : MP_EINVAL;
}

/* ---- check and recovery (lock held) ------------------------------------------------- */

static void mutex_words(const pthread_mutex_t *m, uint32_t *word, int *kind); /* the lock */
static int expected_kind(void);

/* The registry's size fields (what bounds every walk of it, rebuild()'s among them). */
static int check_sizes(const mp_shared_ctl_t *c, uint64_t len, char *msg, size_t msglen)
{
    if (len < sizeof *c) MPI_FAIL("lock area of %llu bytes is too short", (unsigned long long)len);
    if (c->magic != CTL_MAGIC) MPI_FAIL("bad lock area magic 0x%08x", c->magic);
    if (c->max_entries == 0 || c->max_entries > ((uint64_t)1 << 28) ||
        c->bits_max != bits_for(c->max_entries) || c->bits < 4 || c->bits > c->bits_max ||
        c->committed > c->max_entries || c->top > c->committed ||
        (uint64_t)c->committed * 2 > ((uint64_t)1 << c->bits))
        MPI_FAIL("registry size fields are inconsistent");
    if (c->lease_max == 0 || c->lease_max > ((uint64_t)1 << 28))
        MPI_FAIL("lease table size %u is out of range", c->lease_max);
    if (mp_shared_ctl_size(c->max_entries, c->lease_max) != len)
        MPI_FAIL("registry needs %llu bytes, the segment gives %llu",
                 (unsigned long long)mp_shared_ctl_size(c->max_entries, c->lease_max),
                 (unsigned long long)len);
    return MP_OK;
}

int mp_shared_check_layout(const mp_shared_ctl_t *c, uint64_t len, char *msg, size_t msglen)
{
    int rc = check_sizes(c, len, msg, msglen);
    if (rc) return rc;
    int kind, want = expected_kind();
    uint32_t word;
    mutex_words(&c->lock.mutex, &word, &kind);
    if (want >= 0 && kind != want)
        MPI_FAIL("the lock is not a robust process-shared mutex (kind %d, expected %d)", kind, want);
    /* The count and the free list derive from the entries (not undo-logged: a roll-back
     * rebuilds them, inside the recovery, before IDLE): only between calls do they hold
     * to top.  While a call or a recovery is under way (or was killed: an attach checks
     * before the lock and the recovery under it), a roll-back may have put top back
     * below a count not yet rebuilt. */
    int idle = MP_TX_PHASE(__atomic_load_n(&c->journal.phase, __ATOMIC_ACQUIRE)) == MP_TX_IDLE;
    if (idle && c->entries > c->top)
        MPI_FAIL("registry holds %u entries, at most %u", c->entries, c->top);
    if (idle && c->free_head != MP_NIL && c->free_head >= c->top)
        MPI_FAIL("the free entry list starts at %u, beyond the entries in use", c->free_head);
    if (c->leases > c->lease_max) MPI_FAIL("lease table holds %u leases, at most %u", c->leases,
                                           c->lease_max);
    if (c->lease_timeout_ns == 0 || c->lease_timeout_ns > MP_LEASE_TIMEOUT_MAX)
        MPI_FAIL("lease timeout of %llu ns is out of range",
                 (unsigned long long)c->lease_timeout_ns);
    if (c->lease_free != MP_NIL && c->lease_free >= c->lease_max)
        MPI_FAIL("the free lease list starts at %u, beyond the table", c->lease_free);
    return MP_OK;
}

/* Allocated ranges without a registry entry, collected by a walk (64 at a time). */
struct orphans {
    mp_shared_ctl_t *c;
    uint64_t offset[64];
    int n;
};

static int orphan_cb(void *ctx, uint64_t offset, uint64_t size, int allocated)
{
    struct orphans *w = ctx;
    (void)size;
    if (allocated && mp_reg_lookup(w->c, offset) == MP_NIL) {
        w->offset[w->n++] = offset;
        if (w->n == 64) return 1;
    }
    return 0;
}

/* The index (its 1 << bits slots) from the used entries. */
static void reindex(mp_shared_ctl_t *c)
{
    mp_entry_t *e = entries_of(c);
    for (uint64_t s = 0, n = (uint64_t)1 << c->bits; s < n; s++) index_of(c)[s] = MP_NIL;
    for (uint32_t i = 0; i < c->top; i++)
        if (e[i].offset != UNUSED) index_insert(c, i);
}

/* Rebuild the index, the count and the free list from the entries (repair after a
 * death). */
static void rebuild(mp_shared_ctl_t *c)
{
    mp_entry_t *e = entries_of(c);
    reindex(c);
    c->free_head = MP_NIL;
    c->entries = 0;
    for (uint32_t i = c->top; i-- > 0;) {
        if (e[i].offset != UNUSED) {
            c->entries++;
        } else {
            e[i].size = c->free_head;
            c->free_head = i;
        }
    }
}

/* S4, the leases' part: every used slot checked against the entries, and counted by
 * entry into tally (when not NULL).  With repair != 0, a used slot that names no
 * used entry of its tag is cleared (a death between a slot's fields and its tag
 * cannot leave one: the tag goes last; a crafted or torn one can), and the free list,
 * the count and the deadline bound are rebuilt by leases_rebuild after the entries'
 * repair. */
static int check_leases(mp_shared_ctl_t *c, uint32_t *tally, int repair, char *msg,
                        size_t msglen)
{
    mp_lease_t *l = leases_of(c);
    mp_entry_t *e = entries_of(c);
    uint64_t used = 0, nfree = 0, pinned = 0, horizon = now_ns() + c->lease_timeout_ns;
    for (uint32_t k = 0; k < c->lease_max; k++) {
        if (!l[k].tag) continue;
        uint32_t i = l[k].entry;
        int bad = i >= c->top || e[i].offset == UNUSED ||
                  __atomic_load_n(&e[i].tag, __ATOMIC_ACQUIRE) != l[k].tag;
        if (bad || l[k].gen == 0) {
            if (!repair && bad)
                MPI_FAIL("lease %u names entry %u of tag %llu, which holds no such range", k, i,
                         (unsigned long long)l[k].tag);
            if (!repair) MPI_FAIL("lease %u is in use with generation 0", k);
            l[k].tag = 0;
            c->repaired++;
            continue;
        }
        if (l[k].deadline == PINNED) pinned++;
        else if (!repair && (l[k].deadline > horizon || l[k].deadline < c->lease_due))
            MPI_FAIL("lease %u has a deadline outside [earliest deadline, now + timeout]", k);
        if (tally) tally[i]++;
        used++;
    }
    if (repair) return MP_OK;
    /* every pinned slot is on its entry's chain, and the chains hold nothing else */
    uint64_t chained = 0;
    for (uint32_t i = 0; i < c->top; i++) {
        uint32_t n = 0;
        for (uint32_t k = e[i].pins - 1; e[i].pins; k = l[k].next) {
            if (k >= c->lease_max || !l[k].tag || l[k].deadline != PINNED || l[k].entry != i ||
                e[i].offset == UNUSED || ++n > c->lease_max)
                MPI_FAIL("registry entry %u: its chain of pinned slots is broken at %u", i, k);
            chained++;
            if (l[k].next == MP_NIL) break;
        }
    }
    if (chained != pinned)
        MPI_FAIL("%llu pinned slots, %llu on their entries' chains", (unsigned long long)pinned,
                 (unsigned long long)chained);
    for (uint32_t k = c->lease_free; k != MP_NIL; k = l[k].next)
        if (k >= c->lease_max || l[k].tag || ++nfree > c->lease_max)
            MPI_FAIL("the free lease list is broken at %u", k);
    if (used != c->leases || used + nfree != c->lease_max || pinned != c->pinned)
        MPI_FAIL("lease counts disagree: %u counted (%u pinned), %llu used (%llu pinned), "
                 "%llu free", c->leases, c->pinned, (unsigned long long)used,
                 (unsigned long long)pinned, (unsigned long long)nfree);
    return MP_OK;
}

/* The leases that name entry i: from the tally, or counted (no memory for one). */
static uint64_t leases_of_entry(mp_shared_ctl_t *c, const uint32_t *tally, uint32_t i)
{
    if (tally) return tally[i];
    mp_lease_t *l = leases_of(c);
    uint64_t n = 0;
    for (uint32_t k = 0; k < c->lease_max; k++) n += l[k].tag && l[k].entry == i;
    return n;
}

/* After a repair: drop the leases of entries the repair dropped, rebuild the free
 * list, the count and the deadline bound from the slots. */
static void leases_rebuild(mp_shared_ctl_t *c)
{
    mp_lease_t *l = leases_of(c);
    mp_entry_t *e = entries_of(c);
    c->lease_free = MP_NIL;
    c->leases = 0;
    c->pinned = 0;
    c->lease_due = UINT64_MAX;
    for (uint32_t i = 0; i < c->top; i++) e[i].pins = 0; /* chains: below */
    for (uint32_t k = c->lease_max; k-- > 0;) {
        if (l[k].tag && (l[k].entry >= c->top || e[l[k].entry].offset == UNUSED ||
                         e[l[k].entry].tag != l[k].tag)) {
            l[k].tag = 0;
            c->repaired++;
        }
        if (l[k].tag) {
            c->leases++;
            if (l[k].deadline == PINNED) {
                c->pinned++;
                l[k].next = e[l[k].entry].pins ? e[l[k].entry].pins - 1 : MP_NIL;
                e[l[k].entry].pins = k + 1;
            }
            if (l[k].deadline < c->lease_due) c->lease_due = l[k].deadline;
        } else {
            l[k].next = c->lease_free;
            c->lease_free = k;
        }
    }
}

/* S2 and S3.  With repair != 0, entries without a live range are dropped, the
 * index and free list are rebuilt from the entries, and live ranges without an
 * entry are freed (what a dead owner's half-done call left); each repair is
 * counted in c->repaired. */
static int check_entries(mp_shared_ctl_t *c, const mp_ops_t *ops, void *st, mp_tx_t *repair,
                         const uint32_t *tally, char *msg, size_t msglen)
{
    mp_entry_t *e = entries_of(c);
    uint32_t *ix = index_of(c);
    uint64_t slots = (uint64_t)1 << c->bits, used = 0, indexed = 0, nfree = 0;
    uint64_t serial = __atomic_load_n(&c->serial, __ATOMIC_ACQUIRE);
    for (uint32_t i = 0; i < c->top; i++) {
        if (e[i].offset == UNUSED) continue;
        uint64_t s = st_load(&e[i]), size, tag = __atomic_load_n(&e[i].tag, __ATOMIC_ACQUIRE);
        uint64_t borrowed = e[i].overflow, want;
        for (int k = 0; k < MP_HOLDERS; k++) borrowed += e[i].holder[k].count;
        borrowed += leases_of_entry(c, tally, i); /* references in flight */
        want = borrowed + ((s & OWNER_REF) ? 1 : 0);
        if ((s & REFS_MASK) != want) {
            if (!repair) MPI_FAIL("registry entry %u (offset %llu): %llu refs, its holders and leases "
                                  "account for %llu", i, (unsigned long long)e[i].offset,
                                  (unsigned long long)(s & REFS_MASK), (unsigned long long)want);
            /* a death between a reference's count and its holder: trust the holders.
             * The owner may release its own reference meanwhile (no lock): recount
             * the owner's part from the state each try. */
            uint64_t n;
            do {
                n = (s & ~REFS_MASK) | (borrowed + ((s & OWNER_REF) ? 1 : 0));
            } while (!st_cas(&e[i], &s, n));
            s = n;
            c->repaired++;
        }
        /* an owner may stamp a cached range with a tag reserved after serial was read
         * (mp_ref_reuse takes no lock): serial only grows, read it again */
        if (tag > serial) serial = __atomic_load_n(&c->serial, __ATOMIC_ACQUIRE);
        if (tag == 0 || tag > serial || ((s & REFS_MASK) == 0 && (s >> 32) == 0) ||
            ops->size_of(st, e[i].offset, &size) != MP_OK) {
            if (!repair)
                MPI_FAIL("registry entry %u (offset %llu): bad tag or state, or not a live range",
                         i, (unsigned long long)e[i].offset);
            e[i].offset = UNUSED; /* dropped: the rebuild below files it as free */
            c->repaired++;
            continue;
        }
        used++;
        if (!repair && mp_reg_lookup(c, e[i].offset) != i)
            MPI_FAIL("registry entry %u (offset %llu) is not found through the index", i,
                     (unsigned long long)e[i].offset);
    }
    if (!repair) {
        for (uint64_t s = 0; s < slots; s++) {
            if (ix[s] == MP_NIL) continue;
            if (ix[s] >= c->top || e[ix[s]].offset == UNUSED)
                MPI_FAIL("index slot %llu names entry %u, which is not in use",
                         (unsigned long long)s, ix[s]);
            indexed++;
        }
        for (uint32_t i = c->free_head; i != MP_NIL; i = (uint32_t)e[i].size) {
            if (i >= c->top || e[i].offset != UNUSED || ++nfree > c->top)
                MPI_FAIL("the free entry list is broken at %u", i);
        }
        if (used != c->entries || indexed != used || used + nfree != c->top)
            MPI_FAIL("registry counts disagree: %u counted, %llu used, %llu indexed, %llu free",
                     c->entries, (unsigned long long)used, (unsigned long long)indexed,
                     (unsigned long long)nfree);
    } else {
        rebuild(c);
    }
    const mp_head_t *h = st;
    if (h->live != c->entries) {
        if (!repair) MPI_FAIL("the strategy has %llu live ranges, the registry %u",
                              (unsigned long long)h->live, c->entries);
        struct orphans w = {c, {0}, 0};
        int freed;
        do {
            w.n = 0;
            freed = 0;
            ops->walk(st, orphan_cb, &w);
            mp_tx_begin(repair);
            for (int k = 0; k < w.n; k++) {
                if (mp_tx_free(repair, w.offset[k]) != MP_OK) continue;
                c->repaired++;
                freed++;
            }
            mp_tx_commit(repair);
        } while (freed); /* (a range no free takes is no progress: refused below) */
        if (h->live != c->entries) MPI_FAIL("could not reconcile the registry with the strategy");
    }
    return MP_OK;
}

/* S2, S3 and S4: the leases first (the entries' reference counts include them). */
static int check_registry(mp_shared_ctl_t *c, const mp_ops_t *ops, void *st, mp_tx_t *repair,
                          char *msg, size_t msglen)
{
    /* a pool holds its ranges by offset: its registry, its journal, its blocks */
    if (ops->by_handle && ops->by_handle(st))
        MPI_FAIL("the strategy holds ranges allocated by handle, which a pool never makes");
    uint32_t *tally = calloc(c->top ? c->top : 1, sizeof *tally); /* NULL: counted slowly */
    int rc = check_leases(c, tally, repair != NULL, msg, msglen);
    if (rc == MP_OK) rc = check_entries(c, ops, st, repair, tally, msg, msglen);
    if (repair) leases_rebuild(c);
    free(tally);
    return rc;
}

int mp_shared_check(mp_shared_ctl_t *c, uint64_t len, const mp_ops_t *ops, void *st,
                    uint64_t st_len, char *msg, size_t msglen)
{
    int rc = mp_shared_check_layout(c, len, msg, msglen);
    if (rc) return rc;
    if (c->corrupt) MPI_FAIL("the pool was marked corrupt after a process died holding its lock "
                             "(%.64s)", c->why);
    rc = ops->check(st, st_len, msg, msglen);
    if (rc) return rc;
    return check_registry(c, ops, st, NULL, msg, msglen);
}

/* A roll-back of a bound transaction (mp_shared_bind_tx), the undo log applied and the
 * phase still ACTIVE: the logged words are back (an entry's offset, top), not the
 * index, the count and the free list, which are rebuilt from the offsets below top
 * here, before any kill point can leave the phase IDLE with them stale (a death after
 * an add that raised top and counted its entry left count > top once top was put back,
 * and the layout's check refused the pool), and after the size fields that bound the
 * rebuild are checked against the length the binding accepted. */
static int registry_undone(void *arg, char *msg, size_t msglen)
{
    const mp_shared_bind_t *b = arg;
    int rc = check_sizes(b->c, b->len, msg, msglen);
    if (rc) return rc;
    rebuild(b->c);
    return MP_OK;
}

void mp_shared_abort(mp_tx_t *t)
{
    mpi_assert(t->undone == registry_undone); /* (the roll-back rebuilds the registry) */
    mp_tx_abort(t);
    mp_tx_begin(t);
}

/* ---- reclaim (lock held) ------------------------------------------------------------ */
/* A used slot recording a borrowed reference (not a handle in flight) of an entry in
 * range (one out of range is a crafted slot: left alone here, check() names it). */
static int pinned_slot(const mp_shared_ctl_t *c, const mp_lease_t *s)
{
    return s->tag && s->deadline == PINNED && s->entry < c->top;
}

/* mp_shared_reclaim for every pid `gone` says yes to, in one pass over the pinned
 * slots and one over the entries. */
uint64_t mp_shared_reclaim_if(mp_shared_ctl_t *c, mp_tx_t *t, int (*gone)(void *ctx, uint32_t pid),
                              void *ctx, uint64_t *released)
{
    mp_entry_t *e = entries_of(c);
    mp_lease_t *l = leases_of(c);
    uint64_t freed = 0;
    *released = 0;
    /* first the references the dead borrowed beyond the holders (pinned slots) */
    for (uint32_t k = 0; c->pinned && k < c->lease_max; k++) {
        if (!pinned_slot(c, &l[k]) || !gone(ctx, l[k].pid)) continue;
        uint32_t i = l[k].entry, pid = l[k].pid;
        mp_tx_room(t, 1, PIN_UNDO + 8); /* between slots the registry agrees with the state */
        unpin(c, k);
        ++*released;
        /* (a CAS: a rollback recounts refs from the holders and the slots restored) */
        if (drop_ref(&e[i], pid) == 1) { /* the last reference: the range goes back */
            uint64_t off = e[i].offset;
            mp_reg_drop(c, i);
            mp_tx_free(t, off);
            freed++;
        }
    }
    for (uint32_t i = 0; i < c->top; i++) {
        if (e[i].offset == UNUSED) continue;
        /* between entries the registry and the strategy agree: room for the next one */
        mp_tx_room(t, 1, 2 * MP_HOLDERS + 8);
        uint64_t borrowed = 0;
        for (int k = 0; k < MP_HOLDERS; k++)
            if (e[i].holder[k].count && gone(ctx, e[i].holder[k].pid)) {
                borrowed += e[i].holder[k].count;
                J32(c, e[i].holder[k].count, 0);
            }
        uint64_t s = st_load(&e[i]), n, refs;
        int mine = (uint32_t)(s >> 32) != MP_NAME_PID && gone(ctx, (uint32_t)(s >> 32));
        if (mine) { /* a dead owner's word: no one else writes it, so it is logged */
            refs = s & REFS_MASK;
            uint64_t own = (s & OWNER_REF) ? 1 : 0;
            /* (counts that do not add up, a crafted entry: none left rather than a wrap) */
            n = mk(0, 0, refs >= borrowed + own ? refs - borrowed - own : 0);
            J64(c, e[i].state, n);
        } else {
            do { /* the live owner may release its own reference meanwhile: a CAS, and
                  * a rollback recounts refs from the holders restored (check_registry) */
                refs = s & REFS_MASK;
                if (refs == 0) break; /* cached by a live process: its own */
                n = (s & ~REFS_MASK) | (refs >= borrowed ? refs - borrowed : 0);
            } while (!st_cas(&e[i], &s, n));
            if (refs == 0) continue;
        }
        *released += refs - (n & REFS_MASK);
        if ((n & REFS_MASK) == 0) { /* no reference left (or cached by the dead) */
            uint64_t off = e[i].offset;
            mp_reg_drop(c, i);
            mp_tx_free(t, off);
            freed++;
        }
    }
    return freed;
}

static int is_pid(void *ctx, uint32_t pid) { return pid == *(const uint32_t *)ctx; }

uint64_t mp_shared_reclaim(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid, uint64_t *released)
{
    return mp_shared_reclaim_if(c, t, is_pid, &pid, released);
}

int mp_shared_pids(mp_shared_ctl_t *c, int (*fn)(void *ctx, uint32_t pid), void *ctx)
{
    mp_entry_t *e = entries_of(c);
    mp_lease_t *l = leases_of(c);
    int r;
    for (uint32_t i = 0; i < c->top; i++) {
        if (e[i].offset == UNUSED) continue;
        uint32_t owner = mp_entry_owner(&e[i]);
        if (owner != MP_NAME_PID && (r = fn(ctx, owner))) return r;
        for (int k = 0; k < MP_HOLDERS; k++)
            if (e[i].holder[k].count && e[i].holder[k].pid != MP_NAME_PID &&
                (r = fn(ctx, e[i].holder[k].pid)))
                return r;
    }
    for (uint32_t k = 0; c->pinned && k < c->lease_max; k++)
        if (pinned_slot(c, &l[k]) && l[k].pid != MP_NAME_PID && (r = fn(ctx, l[k].pid)))
            return r;
    return 0;
}

/* ---- the lock ------------------------------------------------------------------------ */

int mp_shared_trylock(mp_shared_ctl_t *c) { return pthread_mutex_trylock(&c->lock.mutex); }

/* ---- who holds the lock ------------------------------------------------------------
 * A robust mutex is recovered by the kernel only when its owner exits: a lock word
 * that names a live process which never took the lock (or a thread id that never
 * registered it on a robust list) would make every taker wait forever.  So while a
 * taker waits, about once a second it looks at the holder the lock word names:
 *   OK        a thread of a process that maps this segment (same st_dev/st_ino in
 *             /proc/<tid>/maps): a legitimate holder, however long it holds; wait.
 *   GONE      no such thread (or a zombie), and the kernel did not mark the word
 *             FUTEX_OWNER_DIED: nothing will ever release it.
 *   STRANGER  a live thread whose process does not map the segment.
 *   SELF      this very thread (a taker never re-takes the lock it holds).
 *   UNKNOWN   its memory map cannot be read (another user's process, hidepid) or this
 *             mapping has no file identity: waited for up to MEMPOOL_LOCK_UNVERIFIED_S
 *             seconds (default 30) of the same holder, then refused.
 * GONE, STRANGER and SELF are refused when two looks a second apart find the same
 * lock word both times (a holder that let go and exited between a read of the word
 * and the look at /proc is not mistaken for one).  Linux /proc; holders in another
 * pid namespace cannot be told apart (as reclaim's pids cannot). */
#define PROBE_NS 1000000000ull
#define TID_MASK 0x3fffffffu   /* FUTEX_TID_MASK   */
#define OWNER_DIED 0x40000000u /* FUTEX_OWNER_DIED */

/* glibc's layout of the mutex: the futex word (owner tid | WAITERS | OWNER_DIED: what
 * the kernel and every taker act on) and the kind.  0 / -1 elsewhere: no probing. */
static void mutex_words(const pthread_mutex_t *m, uint32_t *word, int *kind)
{
#ifdef __GLIBC__
    *word = (uint32_t)__atomic_load_n(&m->__data.__lock, __ATOMIC_ACQUIRE);
    *kind = __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED);
#else
    (void)m;
    *word = 0;
    *kind = -1;
#endif
}

/* The kind mp_shared_ctl_init gives the mutex (-1 where unknown). */
static int expected_kind(void)
{
    static int kind = -2;
    int k = __atomic_load_n(&kind, __ATOMIC_RELAXED);
    if (k != -2) return k;
    pthread_mutex_t m; /* made as mp_shared_ctl_init makes the pool's */
    pthread_mutexattr_t a;
    k = -1;
    if (!pthread_mutexattr_init(&a)) {
        if (!pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED) &&
            !pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST) &&
            !pthread_mutex_init(&m, &a)) {
            uint32_t w;
            mutex_words(&m, &w, &k);
            pthread_mutex_destroy(&m);
        }
        pthread_mutexattr_destroy(&a);
    }
    __atomic_store_n(&kind, k, __ATOMIC_RELAXED);
    return k;
}

enum holder { HOLDER_OK, HOLDER_UNKNOWN, HOLDER_GONE, HOLDER_STRANGER, HOLDER_SELF };

/* The device and inode of the file mapping that holds addr in maps (an open
 * /proc/<pid>/maps); with addr 0, whether any mapping has (dev, ino).  1 found. */
static int scan_maps(FILE *f, uintptr_t addr, unsigned *maj, unsigned *min, unsigned long *ino)
{
    char line[512];
    int whole = 1; /* a line longer than the buffer: only its head has the fields */
    while (fgets(line, sizeof line, f)) {
        int head = whole;
        whole = strchr(line, '\n') != NULL;
        if (!head) continue;
        unsigned long lo, hi, i;
        unsigned a, b;
        if (sscanf(line, "%lx-%lx %*s %*x %x:%x %lu", &lo, &hi, &a, &b, &i) != 5) continue;
        if (addr ? (addr >= lo && addr < hi) : (a == *maj && b == *min && i == *ino)) {
            *maj = a, *min = b, *ino = i;
            return 1;
        }
    }
    return 0;
}

static enum holder judge_holder(const mp_shared_ctl_t *c, uint32_t tid, long *pid)
{
    char path[64], line[256];
    *pid = (long)tid;
    if ((long)tid == (long)syscall(SYS_gettid)) return HOLDER_SELF;
    snprintf(path, sizeof path, "/proc/%u/status", tid);
    FILE *f = fopen(path, "re");
    if (!f) return errno == ENOENT || errno == ESRCH ? HOLDER_GONE : HOLDER_UNKNOWN;
    int zombie = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "State:", 6)) zombie = strpbrk(line + 6, "ZX") != NULL;
        else if (!strncmp(line, "Tgid:", 5)) *pid = strtol(line + 5, NULL, 10);
    }
    fclose(f);
    if (zombie) return HOLDER_GONE; /* exited: its robust list was walked already */
    unsigned maj = 0, min = 0;
    unsigned long ino = 0;
    f = fopen("/proc/self/maps", "re");
    int mine = f && scan_maps(f, (uintptr_t)c, &maj, &min, &ino);
    if (f) fclose(f);
    if (!mine || !ino) return HOLDER_UNKNOWN; /* not a file mapping: no identity to match */
    snprintf(path, sizeof path, "/proc/%u/maps", tid);
    f = fopen(path, "re");
    if (!f) return errno == ENOENT || errno == ESRCH ? HOLDER_GONE : HOLDER_UNKNOWN;
    int found = scan_maps(f, 0, &maj, &min, &ino);
    int failed = ferror(f);
    fclose(f);
    if (found) return HOLDER_OK;
    return failed ? HOLDER_UNKNOWN : HOLDER_STRANGER; /* EACCES shows as a read error */
}

struct suspect {
    uint32_t word;    /* the lock word last judged                  */
    int strikes;      /* consecutive looks that found it unreleasable */
    uint64_t since;   /* when an unverifiable holder was first seen   */
    uint32_t unknown; /* that holder's lock word                      */
};

static uint64_t unverified_patience_ns(void)
{
    const char *s = getenv("MEMPOOL_LOCK_UNVERIFIED_S");
    double v = s ? strtod(s, NULL) : 30.0;
    return v > 0 && v < 1e9 ? (uint64_t)(v * 1e9) : 30000000000ull;
}

/* One look at the holder while waiting: 0 to go on waiting, or MP_ECORRUPT with msg. */
static int probe_holder(const mp_shared_ctl_t *c, struct suspect *s, char *msg, size_t msglen)
{
    uint32_t word;
    int kind;
    long pid;
    mutex_words(&c->lock.mutex, &word, &kind);
    uint32_t tid = word & TID_MASK;
    if (!word || (word & OWNER_DIED)) { /* free now, or the kernel recovered it */
        s->strikes = 0;
        s->unknown = 0;
        return 0;
    }
    if (!tid) { /* bits (waiters) but no holder: glibc never leaves one (an unlock clears
                   the whole word), yet taking it waits for a wake-up no one sends */
        s->strikes = s->word == word ? s->strikes + 1 : 1;
        s->word = word;
        if (s->strikes < 2) return 0;
        snprintf(msg, msglen, "the pool's lock word 0x%08x names no holder, yet it cannot be "
                 "taken: it can never be released", word);
        return MP_ECORRUPT;
    }
    enum holder h = judge_holder(c, tid, &pid);
    uint32_t again;
    mutex_words(&c->lock.mutex, &again, &kind);
    if (again != word) h = HOLDER_OK; /* it moved on meanwhile: a live lock */
    if (h != HOLDER_UNKNOWN) s->unknown = 0;
    if (h == HOLDER_OK) {
        s->strikes = 0;
        return 0;
    }
    if (h == HOLDER_UNKNOWN) {
        uint64_t now = now_ns();
        if (s->unknown != word) {
            s->unknown = word;
            s->since = now;
        }
        if (now - s->since < unverified_patience_ns()) return 0;
        snprintf(msg, msglen, "the pool's lock has been held for over %.0f s by pid %ld (tid %u), "
                 "which this process cannot verify (MEMPOOL_LOCK_UNVERIFIED_S)",
                 (double)(now - s->since) / 1e9, pid, tid);
        return MP_ECORRUPT;
    }
    s->strikes = s->word == word ? s->strikes + 1 : 1;
    s->word = word;
    if (s->strikes < 2) return 0;
    if (h == HOLDER_SELF)
        snprintf(msg, msglen, "the pool's lock names this thread (tid %u) as its holder, which "
                 "never took it: it can never be released", tid);
    else if (h == HOLDER_GONE)
        snprintf(msg, msglen, "the pool's lock is held by pid %ld, which does not exist and "
                 "never registered it with the kernel: it can never be released", pid);
    else if ((long)tid != pid)
        snprintf(msg, msglen, "the pool's lock is held by pid %ld (thread %u), which does not "
                 "have the pool open", pid, tid);
    else
        snprintf(msg, msglen, "the pool's lock is held by pid %ld, which does not have the pool "
                 "open", pid);
    return MP_ECORRUPT;
}

/* The wait goes in slices of 100 ms, each a fresh futex wait that reads the lock word
 * again.  A wake-up lost to a process killed in the middle of the lock or unlock of the
 * robust mutex (seen once in the stress test under ASan: a waiter asleep for good while
 * every other process had exited; re-entering the wait took the lock at once, with
 * EOWNERDEAD) then costs at most one slice instead of a hang.  About once a second the
 * holder the lock word names is looked at (probe_holder above): one that can never let
 * go ends the wait with MP_ECORRUPT and msg, the lock not taken and nothing written. */
int mp_shared_lock_wait(mp_shared_ctl_t *c, char *msg, size_t msglen)
{
    uint64_t t0 = now_ns(), next_probe = t0 + PROBE_NS;
    struct suspect sus = {0, 0, 0, 0};
    int rc;
    do {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_nsec += 100000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        rc = pthread_mutex_clocklock(&c->lock.mutex, CLOCK_MONOTONIC, &until);
        if (rc == ETIMEDOUT && now_ns() >= next_probe) {
            next_probe = now_ns() + PROBE_NS;
            if (probe_holder(c, &sus, msg, msglen)) return MP_ECORRUPT; /* nothing written */
        }
    } while (rc == ETIMEDOUT);
    c->lock_waits++;
    c->lock_wait_ns += now_ns() - t0;
    return rc;
}

/* Called with the mutex held after trylock/lock returned rc (0 or EOWNERDEAD). */
/* A call interrupted by its process's death: brought to an end from the journal
 * (journal.h), then the registry is recounted against the strategy.  MP_OK, or
 * MP_ECORRUPT with the reason in msg (the journal or the state is really broken). */
int mp_shared_recover(mp_shared_ctl_t *c, mp_tx_t *t, char *msg, size_t msglen)
{
    int rc = mp_tx_validate(t, msg, msglen);
    if (rc) return rc;
    /* the layout was validated at attach, at the length t is bound with: no legitimate
     * undo record changes it, so after the log is applied it must still be what it was
     * (else a crafted record would have the index rebuilt at a size nobody checked) */
    mpi_assert(t->undone == registry_undone); /* (a roll-back rebuilds the registry) */
    uint64_t len = ((const mp_shared_bind_t *)t->undone_arg)->len;
    int phase = mp_tx_recover(t, msg, msglen);
    if (phase < 0) return phase;
    if ((rc = mp_shared_check_layout(c, len, msg, msglen))) return rc;
    rc = t->ops->check(t->st, t->st_len, msg, msglen);
    if (rc) return rc;
    return check_registry(c, t->ops, t->st, t, msg, msglen);
}

int mp_shared_locked(mp_shared_ctl_t *c, int rc, mp_tx_t *t, char *msg, size_t msglen)
{
    if (rc == EOWNERDEAD || (rc == 0 && mp_tx_pending(t))) {
        if (rc == EOWNERDEAD) c->recoveries++;
        if (!c->corrupt && mp_shared_recover(c, t, msg, msglen) != MP_OK) {
            c->corrupt = 1;
            snprintf(c->why, sizeof c->why, "%s", msg);
        }
        if (rc == EOWNERDEAD) pthread_mutex_consistent(&c->lock.mutex);
    } else if (rc != 0) { /* a lock word no valid mutex has (EINVAL, EDEADLK, ...) */
        if (rc != MP_ECORRUPT) /* else mp_shared_lock_wait's verdict is in msg */
            snprintf(msg, msglen, "the pool's lock is invalid: taking it failed with %s",
                     strerror(rc));
        return MP_ECORRUPT;
    }
    if (c->corrupt) {
        snprintf(msg, msglen, "the pool is corrupt: a process died holding its lock in the "
                 "middle of a call (%.64s)", c->why);
        pthread_mutex_unlock(&c->lock.mutex);
        return MP_ECORRUPT;
    }
    return MP_OK;
}

void mp_shared_unlock_raw(mp_shared_ctl_t *c, int rc)
{
    if (rc == EOWNERDEAD) pthread_mutex_consistent(&c->lock.mutex);
    pthread_mutex_unlock(&c->lock.mutex);
}

void mp_shared_unlock(mp_shared_ctl_t *c)
{
    /* a transaction left open would be rolled back by the next taker: commit first */
    mpi_assert(MP_TX_PHASE(__atomic_load_n(&c->journal.phase, __ATOMIC_ACQUIRE)) == MP_TX_IDLE);
    pthread_mutex_unlock(&c->lock.mutex);
}

void mp_shared_stats(const mp_shared_ctl_t *c, uint64_t out[8])
{
    out[0] = c->entries;
    out[1] = c->max_entries;
    out[2] = __atomic_load_n(&c->serial, __ATOMIC_RELAXED);
    out[3] = c->committed;
    out[4] = c->lock_waits;
    out[5] = c->lock_wait_ns;
    out[6] = c->recoveries;
    out[7] = c->repaired;
}

/* ---- leases (lock held, but for mp_lease_due and mp_lease_stats) -------------------- */
/* Take the first unused slot for a lease of entry i; tag last (see mp_lease_t). */
static uint32_t lease_put(mp_shared_ctl_t *c, uint32_t i, uint64_t tag, uint32_t pid,
                          uint64_t deadline)
{
    uint32_t k = c->lease_free;
    mp_lease_t *l = &leases_of(c)[k];
    J32(c, c->lease_free, l->next);
    J32(c, l->entry, i);
    J64(c, l->deadline, deadline);
    J32(c, l->pid, pid);
    J32(c, l->gen, l->gen + 1 ? l->gen + 1 : 1); /* never 0: a token is never 0 */
    J32(c, l->next, MP_NIL);
    J64(c, l->tag, tag);
    J32(c, c->leases, c->leases + 1);
    if (deadline < c->lease_due) J64(c, c->lease_due, deadline);
    return k;
}

/* Give slot k back to the free list; tag first. */
static void lease_clear(mp_shared_ctl_t *c, uint32_t k)
{
    mp_lease_t *l = &leases_of(c)[k];
    J64(c, l->tag, 0);
    J32(c, l->next, c->lease_free);
    J32(c, c->lease_free, k);
    J32(c, c->leases, c->leases - 1);
    if (!c->leases) J64(c, c->lease_due, UINT64_MAX);
}

int mp_lease_add(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t i, uint64_t tag, uint32_t pid,
                 uint64_t *token)
{
    if (c->lease_free == MP_NIL) mp_lease_expire(c, t, pid); /* full: the due ones */
    mp_tx_room(t, 1, 32);
    if (c->lease_free == MP_NIL) return MP_ENONODES;
    mp_entry_t *e = &entries_of(c)[i];
    int disp;
    int rc = ref_inc(e, tag, pid, &disp);
    if (disp) { /* lost a race with a reuse and gave the last reference back: ours */
        uint64_t off = e->offset;
        mp_reg_drop(c, i);
        mp_tx_free(t, off);
    }
    if (rc != MP_OK) return rc;
    uint64_t deadline = now_ns() + c->lease_timeout_ns;
    uint32_t k = lease_put(c, i, tag, pid, deadline);
    *token = (uint64_t)leases_of(c)[k].gen << 32 | k;
    return MP_OK;
}

int mp_lease_adopt(mp_shared_ctl_t *c, uint64_t token, uint32_t i, uint64_t tag, uint32_t pid)
{
    uint32_t k = (uint32_t)token;
    if (k >= c->lease_max) return MP_ENOTALLOC;
    mp_lease_t *l = &leases_of(c)[k];
    if (!l->tag || l->tag != tag || l->gen != (uint32_t)(token >> 32) || l->entry != i ||
        l->deadline == PINNED) /* (a pinned slot is a borrower's, never handed out) */
        return MP_ENOTALLOC;
    lease_clear(c, k);
    holder_add(c, &entries_of(c)[i], pid); /* the lease's reference, now pid's */
    return MP_OK;
}

int mp_lease_due(const mp_shared_ctl_t *c)
{
    uint64_t due = __atomic_load_n(&c->lease_due, __ATOMIC_RELAXED);
    return due != UINT64_MAX && now_ns() >= due;
}

uint64_t mp_lease_expire(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid)
{
    if (c->lease_due == UINT64_MAX) return 0; /* the common path */
    return mp_lease_expire_at(c, t, pid, now_ns());
}

uint64_t mp_lease_expire_at(mp_shared_ctl_t *c, mp_tx_t *t, uint32_t pid, uint64_t now)
{
    uint64_t due = UINT64_MAX, n = 0;
    if (now < c->lease_due) return 0;
    mp_lease_t *l = leases_of(c);
    for (uint32_t k = 0; k < c->lease_max; k++) {
        if (!l[k].tag) continue;
        if (l[k].deadline > now) {
            if (l[k].deadline < due) due = l[k].deadline;
            continue;
        }
        uint32_t i = l[k].entry;
        /* (this runs at the first lock an attaching process takes, before its check of
         * the registry: a slot that does not name a used entry with its tag is left for
         * that check to report) */
        if (i >= c->top || entries_of(c)[i].tag != l[k].tag ||
            entries_of(c)[i].offset == UNUSED)
            continue;
        mp_tx_room(t, 1, 32); /* between leases the registry agrees with the state */
        lease_clear(c, k);
        J64(c, c->leases_expired, c->leases_expired + 1);
        n++;
        mp_entry_t *e = &entries_of(c)[i];
        /* (a CAS: a rollback recounts refs from the holders and the leases restored) */
        if (drop_ref(e, pid) == 1) { /* the last reference: the range goes back */
            uint64_t off = e->offset;
            mp_reg_drop(c, i);
            mp_tx_free(t, off);
        }
    }
    J64(c, c->lease_due, due);
    return n;
}

void mp_lease_stats(const mp_shared_ctl_t *c, uint64_t out[4])
{
    out[0] = c->leases - c->pinned; /* in flight */
    out[1] = c->lease_max;
    out[2] = c->leases_expired;
    out[3] = c->lease_timeout_ns;
}
