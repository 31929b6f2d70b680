/*
 * replay.h -- the C API of traces (trace.c: parse the mempool-trace v1 text into flat
 * arrays) and of their replay through a strategy's table or the C library (replay.c).
 * Used by the binding's trace functions and the bench; not part of the strategies'
 * API (mempool.h).  Names: mp_trace_*, mp_replay*, MP_OP_*, MP_TRACE_*.
 */
#ifndef MEMPOOL_REPLAY_H
#define MEMPOOL_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "mempool.h"

enum mp_trace_op { MP_OP_ALLOC = 0, MP_OP_FREE = 1, MP_OP_REALLOC = 2 };
#define MP_TRACE_MAX_BYTES ((uint64_t)1 << 62) /* a size, and all live sizes together */

/* Parse a mempool-trace v1 text (without its header line) into the arrays, which
 * hold room for `cap` ops.  Returns the number of ops, or -1 with *err_line (1-based
 * line number within the whole text, header = line 1) and err set. */
int64_t mp_trace_parse(const char *text, uint64_t len, uint64_t cap, uint8_t *op, uint32_t *id,
                       uint64_t *size, uint32_t *align, uint64_t *err_line, char *err,
                       size_t errlen);

/* The longest line mp_trace_line writes: "a", an ID, a size and an alignment of at
 * most 20 digits each, three spaces and the newline. */
#define MP_TRACE_LINE_MAX 64

static inline char *mp_trace_put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) *p++ = tmp[--n];
    return p;
}

/* Write one mempool-trace v1 line at p (room for MP_TRACE_LINE_MAX bytes): op ('a',
 * 'f' or 'r'), id, then size and align unless UINT64_MAX; returns the end.  No
 * allocation, no locale: the recorders (the binding's trace.record and the malloc
 * preload library) call it from inside allocators. */
static inline char *mp_trace_line(char *p, char op, uint64_t id, uint64_t size, uint64_t align)
{
    *p++ = op;
    *p++ = ' ';
    p = mp_trace_put_u64(p, id);
    if (size != UINT64_MAX) {
        *p++ = ' ';
        p = mp_trace_put_u64(p, size);
    }
    if (align != UINT64_MAX) {
        *p++ = ' ';
        p = mp_trace_put_u64(p, align);
    }
    *p++ = '\n';
    return p;
}

typedef struct mp_replay_result {
    uint64_t ops;         /* operations executed                              */
    uint64_t failures;    /* alloc/realloc that returned an error             */
    uint64_t peak_used;   /* peak of used (strategy rounding included)        */
    uint64_t high_water;  /* highest end offset ever handed out               */
    uint64_t maxlive;     /* peak of the sum of requested sizes of live ids   */
    uint64_t elapsed_ns;  /* wall time of the op loop (final frees included),
                           * the time spent taking samples left out          */
    uint64_t samples;     /* rows written by mp_replay_sampled                */
    int status;           /* MP_OK, or MP_EINVAL for a trace that is not valid */
    uint64_t bad_op;      /* index of the invalid op when status != MP_OK     */
} mp_replay_result_t;

/* Validate a parsed trace (ids <= max_id, 'a' on a free id, 'f'/'r' on a live id,
 * no realloc to 0); `live` is scratch of max_id+1 entries.  Returns MP_OK with
 * res->maxlive set, or MP_EINVAL with res->bad_op = index of the first bad op. */
int mp_trace_validate(uint64_t n, const uint8_t *op, const uint32_t *id, const uint64_t *size,
                      uint32_t max_id, uint64_t *live, mp_replay_result_t *res);

/* Replay through a strategy.  `ptr` and `live` are scratch arrays of max_id+1
 * entries.  Size-0 requests are served as size 1. */
void mp_replay(const mp_ops_t *ops, void *st, uint64_t n, const uint8_t *op, const uint32_t *id,
               const uint64_t *size, const uint32_t *align, uint32_t max_id, uint64_t *ptr,
               uint64_t *live, mp_replay_result_t *res);
/* The columns of a sample row of mp_replay_sampled, in order. */
enum mp_sample_col {
    MP_SAMPLE_OPS,          /* operations done when the row was taken           */
    MP_SAMPLE_USED,         /* head.used (rounding included)                    */
    MP_SAMPLE_REQUESTED,    /* head.requested: bytes asked for by live ranges   */
    MP_SAMPLE_HIGH_WATER,   /* head.high_water                                  */
    MP_SAMPLE_LARGEST_FREE, /* ops->largest_free()                              */
    MP_SAMPLE_AVAILABLE,    /* ops->available()                                 */
    MP_SAMPLE_LIVE,         /* head.live: live ranges                           */
    MP_SAMPLE_COLS
};

/* mp_replay that also writes a row of MP_SAMPLE_COLS figures into `out` after every
 * `every` operations (every >= 1) and one more after the last operation (before the
 * final frees); `out` holds room for n / every + 1 rows; res->samples is the rows
 * written.  The time the samples take is left out of res->elapsed_ns. */
void mp_replay_sampled(const mp_ops_t *ops, void *st, uint64_t n, const uint8_t *op,
                       const uint32_t *id, const uint64_t *size, const uint32_t *align,
                       uint32_t max_id, uint64_t *ptr, uint64_t *live, uint64_t every,
                       uint64_t *out, mp_replay_result_t *res);
/* The same loop through the C library's malloc/free/realloc/posix_memalign. */
void mp_replay_libc(uint64_t n, const uint8_t *op, const uint32_t *id, const uint64_t *size,
                    const uint32_t *align, uint32_t max_id, uint64_t *ptr, uint64_t *live,
                    mp_replay_result_t *res);

#endif /* MEMPOOL_REPLAY_H */
