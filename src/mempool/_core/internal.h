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

#endif /* MEMPOOL_INTERNAL_H */
