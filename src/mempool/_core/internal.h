/*
 * internal.h -- what crosses the core's files but is not its API (the model:
 * mimalloc's include/mimalloc/internal.h).  Every core file includes it, directly
 * or through its strategy's private header; the binding never does.
 *
 * Names say their scope, and one prefix scheme covers the core:
 *
 *   mp_<strategy>_<verb>, mp_<name>, MP_*      the public C API of the strategies:
 *                                              mempool.h (callers: the binding, the
 *                                              replay loop, the C tests)
 *   mp_shared_*, mp_reg_*, mp_ref_*, mp_entry_*
 *                                              shared pools' lock and registry: shared.h
 *   mp_trace_*, mp_replay*, MP_OP_*, MP_TRACE_*
 *                                              traces and their replay: replay.h
 *   mpi_<area>_<verb>, mpi_<name>, MPI_*       internal ("i"): external linkage, or a
 *                                              macro or static inline function, shared
 *                                              by several core files; declared here, or
 *                                              in the private header of the strategy
 *                                              whose files share it (ranges.h, buddy.h,
 *                                              slab.h, heap.h).  Never called from
 *                                              outside _core/ (white-box tests aside).
 *   anything else                              static to one file, or static inline in
 *                                              a private header, with the file's short
 *                                              prefix (rs_, bd_, bm_, ...) or none
 *
 * So every symbol that `nm -g --defined-only` lists for a core object starts with
 * mp_ or mpi_, and one that starts with mpi_ is not API.  (The extension is built
 * with -fvisibility=hidden: none of them leaves the shared library either way.)
 */
#ifndef MEMPOOL_INTERNAL_H
#define MEMPOOL_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "mempool.h"

/* ---- check() ------------------------------------------------------------------------
 * Every check function takes the message buffer as (char *msg, size_t msglen) and
 * reports the first broken invariant it finds: MPI_FAIL(format, ...) writes the
 * message there and returns MP_ECORRUPT from the function it is used in. */
#define MPI_FAIL(...)                                                                            \
    do {                                                                                         \
        snprintf(msg, msglen, __VA_ARGS__);                                                      \
        return MP_ECORRUPT;                                                                      \
    } while (0)

/* ---- assertion levels ---------------------------------------------------------------
 * MP_DEBUG (setup.py: MEMPOOL_DEBUG=1; the C tests' sanitizer build) turns on
 *   - mpi_assert(cond): the key invariants of the hot paths, checked where they are
 *     relied on (compiled to nothing otherwise: cond is not evaluated);
 *   - a check() after every state-changing call: each strategy's public table
 *     mp_<s>_ops wraps alloc, free, realloc and reset of its raw table
 *     mpi_<s>_ops_raw (MPI_OPS_TABLE below), and its extras that change the state
 *     (alloc_array, free_array, rewind) return through MPI_CHECKED.  A failing check
 *     prints the strategy, the call and check()'s message, and aborts.
 * Plain builds define mp_<s>_ops directly: no wrapper, no cost. */
#ifdef MP_DEBUG
#define mpi_assert(cond) ((cond) ? (void)0 : mpi_assert_fail(#cond, __FILE__, __LINE__, __func__))
__attribute__((noreturn, cold)) void mpi_assert_fail(const char *cond, const char *file, int line,
                                                     const char *func);
/* check() the state after `what` (the call returned rc); abort with the message when it
 * fails, else return rc. */
int mpi_debug_after(const mp_ops_t *raw, const void *st, const char *what, int rc);
#define MPI_RAW_OPS_DECL_(KIND, sname, number) extern const mp_ops_t mpi_##sname##_ops_raw;
MP_STRATEGIES(MPI_RAW_OPS_DECL_)
#undef MPI_RAW_OPS_DECL_
#define MPI_RAW_OPS(sname) mpi_##sname##_ops_raw
#define MPI_CHECKED(sname, st, what, rc) mpi_debug_after(&mpi_##sname##_ops_raw, (st), (what), (rc))
#define MPI_OPS_TABLE(sname, ...)                                                                \
    const mp_ops_t mpi_##sname##_ops_raw = {__VA_ARGS__};                                        \
    static int sname##_checked_alloc(void *st, uint64_t size, uint64_t align, uint64_t *out)     \
    {                                                                                            \
        return MPI_CHECKED(sname, st, "alloc", mpi_##sname##_ops_raw.alloc(st, size, align, out)); \
    }                                                                                            \
    static int sname##_checked_free(void *st, uint64_t offset)                                   \
    {                                                                                            \
        return MPI_CHECKED(sname, st, "free", mpi_##sname##_ops_raw.free(st, offset));           \
    }                                                                                            \
    static int sname##_checked_realloc(void *st, uint64_t offset, uint64_t size, uint64_t align, \
                                       uint64_t *out)                                            \
    {                                                                                            \
        return MPI_CHECKED(sname, st, "realloc",                                                 \
                           mpi_##sname##_ops_raw.realloc(st, offset, size, align, out));         \
    }                                                                                            \
    static void sname##_checked_reset(void *st)                                                  \
    {                                                                                            \
        mpi_##sname##_ops_raw.reset(st);                                                         \
        MPI_CHECKED(sname, st, "reset", MP_OK);                                                  \
    }                                                                                            \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Woverride-init\"")       \
    const mp_ops_t mp_##sname##_ops = {__VA_ARGS__, .alloc = sname##_checked_alloc,              \
                                       .free = sname##_checked_free,                             \
                                       .realloc = sname##_checked_realloc,                       \
                                       .reset = sname##_checked_reset,                           \
                                       .replay = NULL};                                          \
    _Pragma("GCC diagnostic pop")
#else
#define mpi_assert(cond) ((void)0)
#define MPI_RAW_OPS(sname) mp_##sname##_ops
#define MPI_CHECKED(sname, st, what, rc) (rc)
#define MPI_OPS_TABLE(sname, ...) const mp_ops_t mp_##sname##_ops = {__VA_ARGS__}
#endif

/* ---- fault injection ----------------------------------------------------------------
 * The fault-injection build (tests/fault/, -DMP_FAULT=1 and GCC's kernel-address
 * instrumentation in call mode, which turns every plain store into a call the test
 * defines) ends a process before its N-th store.  Atomic stores and compare-and-swaps
 * are not instrumented: each is preceded by MPI_FAULT_POINT(address) so that it is a
 * kill point as well.  Nothing in other builds. */
#ifdef MP_FAULT
void mpi_fault_point(const void *addr);
#define MPI_FAULT_POINT(addr) mpi_fault_point(addr)
#else
#define MPI_FAULT_POINT(addr) ((void)0)
#endif

/* The table without the debug build's checks, for a public one (itself in plain builds):
 * what a strategy uses for a state embedded in its own (the Heap's TLSF), and what a
 * white-box test uses on a state it has broken on purpose. */
const mp_ops_t *mpi_ops_raw(const mp_ops_t *ops);

/* ---- the head: identity and counters ------------------------------------------------
 * The counters every strategy keeps in its head (mempool.h: used, requested, live,
 * peak_used, high_water) change only through these, so each is kept by one rule. */

/* A fresh head (the caller zeroed it): what it is, how big, over how many bytes. */
static inline void mpi_head_init(mp_head_t *h, uint16_t kind, uint64_t state_size,
                                 uint64_t capacity)
{
    h->magic = MP_STATE_MAGIC;
    h->kind = kind;
    h->version = MP_STATE_VERSION;
    h->state_size = state_size;
    h->capacity = capacity;
}

/* check(): peak_used lies in [used, high_water] (every byte ever in use lay below the
 * highest end handed out, and neither counter goes down but with the head restored
 * whole); an untrusted state with peak_used 2**63 was taken. */
#define MPI_CHECK_PEAK(h)                                                                        \
    do {                                                                                         \
        if ((h)->peak_used < (h)->used || (h)->peak_used > (h)->high_water)                      \
            MPI_FAIL("peak_used %llu outside [used %llu, high_water %llu]",                      \
                     (unsigned long long)(h)->peak_used, (unsigned long long)(h)->used,          \
                     (unsigned long long)(h)->high_water);                                       \
    } while (0)

/* Something now reaches up to `end`: high_water covers it. */
static inline void mpi_head_reach(mp_head_t *h, uint64_t end)
{
    if (end > h->high_water) h->high_water = end;
}

/* A range was handed out: `size` bytes (its size_of), `req` of them asked for, ending
 * at `end` (0: its end is accounted elsewhere -- the Heap's page that holds it). */
static inline void mpi_head_on_alloc(mp_head_t *h, uint64_t end, uint64_t size, uint64_t req)
{
    mpi_assert(req <= size && end <= h->capacity);
    h->used += size;
    h->requested += req;
    h->live++;
    if (h->used > h->peak_used) h->peak_used = h->used;
    mpi_head_reach(h, end);
}

/* A live range of `size` bytes (`req` asked for) was given back. */
static inline void mpi_head_on_free(mp_head_t *h, uint64_t size, uint64_t req)
{
    mpi_assert(h->live > 0 && size <= h->used && req <= h->requested && req <= size);
    h->used -= size;
    h->requested -= req;
    h->live--;
}

/* A live range changed in place: old_size -> size bytes, old_req -> req asked for, now
 * ending at `end` (0: accounted elsewhere, as for on_alloc). */
static inline void mpi_head_on_resize(mp_head_t *h, uint64_t end, uint64_t old_size,
                                      uint64_t size, uint64_t old_req, uint64_t req)
{
    mpi_assert(old_size <= h->used && old_req <= h->requested && req <= size);
    mpi_assert(end <= h->capacity);
    h->used = h->used - old_size + size;
    h->requested = h->requested - old_req + req;
    if (h->used > h->peak_used) h->peak_used = h->used;
    mpi_head_reach(h, end);
}

/* Everything is free (reset); peak_used and high_water stay. */
static inline void mpi_head_on_reset(mp_head_t *h) { h->used = h->requested = h->live = 0; }

/* available() of every strategy: the bytes not handed out (core.c). */
uint64_t mpi_head_available(const void *st);

/* The Heap's question to its TLSF (tlsf.c): the free range [*lo, *hi) that freeing the
 * allocated range at `off` would make (with its free neighbours); MP_ENOTALLOC when off
 * is no allocated range. */
int mpi_tlsf_freed_extent(const void *st, uint64_t off, uint64_t *lo, uint64_t *hi);

#endif /* MEMPOOL_INTERNAL_H */
