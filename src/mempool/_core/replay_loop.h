/*
 * replay_loop.h -- the timed loop of mp_replay (replay.c) as a template, for the
 * strategies whose per-op cost is small enough that the call through the ops table
 * shows (TLSF, BestFit: mp_ops_t.replay).  Instantiated in the strategy's own file with
 * functions that the compiler inlines, so the loop saves and restores registers once
 * per replay instead of once per op (python3-compileall, TLSF: ~20 of ~200
 * instructions per op).  Semantics are replay.c's loop, op for op: a size 0 is served
 * as 1; a failed alloc leaves the id not live; 'f' and 'r' on an id that is not live
 * are skipped; realloc moves with alignment 1.  The ranges are held by their nodes
 * (ranges.h's handle form, as OffsetAllocator frees: by the node it returned, no
 * offset lookup), which places exactly as the offset calls do.
 */
#ifndef MEMPOOL_REPLAY_LOOP_H
#define MEMPOOL_REPLAY_LOOP_H

#include "replay.h"

/* static uint64_t NAME(st, n, op, id, size, align, max_id, ptr), by node (ranges.h's
 * handle form without its checks: the loop's own ranges): ALLOC(st, size, align, &node)
 * and REALLOC(st, node, size, align, &node) return MP_OK or an error, FREE(st, node)
 * frees; ptr[id] holds each live id's node, and the ranges still live at the end are
 * freed here (ptr[] is all MP_NO_SPACE on entry and on return). */
#define MPI_REPLAY_LOOP(NAME, ALLOC, FREE, REALLOC)                                             \
    static uint64_t NAME(void *st, uint64_t n, const uint8_t *op, const uint32_t *id,            \
                         const uint64_t *size, const uint32_t *align, uint32_t max_id,           \
                         uint64_t *ptr)                                                          \
    {                                                                                            \
        uint64_t failures = 0;                                                                   \
        for (uint64_t k = 0; k < n; k++) {                                                       \
            uint64_t *p = &ptr[id[k]];                                                           \
            uint64_t s = size[k] ? size[k] : 1;                                                  \
            switch (op[k]) {                                                                     \
            case MP_OP_ALLOC:                                                                    \
                if (ALLOC(st, s, align[k], p) != MP_OK) {                                        \
                    *p = MP_NO_SPACE;                                                            \
                    failures++;                                                                  \
                }                                                                                \
                break;                                                                           \
            case MP_OP_FREE:                                                                     \
                if (*p != MP_NO_SPACE) {                                                         \
                    FREE(st, *p);                                                                \
                    *p = MP_NO_SPACE;                                                            \
                }                                                                                \
                break;                                                                           \
            default:                                                                             \
                if (*p != MP_NO_SPACE) {                                                         \
                    uint64_t q;                                                                  \
                    if (REALLOC(st, *p, s, 1, &q) == MP_OK) *p = q;                              \
                    else failures++;                                                             \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (uint64_t i = 0; i <= max_id; i++) {                                                 \
            if (ptr[i] != MP_NO_SPACE) FREE(st, ptr[i]);                                         \
            ptr[i] = MP_NO_SPACE;                                                                \
        }                                                                                        \
        return failures;                                                                         \
    }

#endif /* MEMPOOL_REPLAY_LOOP_H */
