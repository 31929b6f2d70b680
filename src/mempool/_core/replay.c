/*
 * replay.c -- replay a parsed trace through a strategy, or through the C
 * library's allocator as the baseline, in one tight C loop.
 *
 * A pre-pass (not timed) validates the trace (every id <= max_id, 'a' on a free
 * id, 'f'/'r' on a live id) and computes maxlive, the peak of the requested
 * bytes of live ids.  The timed loop then only calls the allocator.  An id whose
 * allocation failed is not live: later 'f'/'r' on it are skipped.  Whatever is
 * live at the end is freed inside the timed loop (the trace's programs exit
 * without freeing everything).
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "replay.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Validate and compute maxlive; uses `live` as scratch (requested size + 1).  A size,
 * or a sum of live sizes, beyond MP_TRACE_MAX_BYTES is refused too (status
 * MP_ENOSPACE rather than MP_EINVAL): no program has that much live, and below it
 * neither `size + 1` nor the running sum can wrap. */
int mp_trace_validate(uint64_t n, const uint8_t *op, const uint32_t *id, const uint64_t *size,
                      uint32_t max_id, uint64_t *live, mp_replay_result_t *res)
{
    memset(live, 0, ((uint64_t)max_id + 1) * sizeof *live);
    uint64_t cur = 0, peak = 0;
    for (uint64_t k = 0; k < n; k++) {
        uint32_t i = id[k];
        int ok = i <= max_id;
        if (ok && op[k] != MP_OP_FREE) {
            /* a realloc gives the old size back first */
            uint64_t old = op[k] == MP_OP_REALLOC && live[i] ? live[i] - 1 : 0;
            if (size[k] > MP_TRACE_MAX_BYTES || cur - old > MP_TRACE_MAX_BYTES - size[k]) {
                res->status = MP_ENOSPACE;
                res->bad_op = k;
                return MP_ENOSPACE;
            }
        }
        if (ok) switch (op[k]) {
            case MP_OP_ALLOC:
                ok = live[i] == 0;
                if (ok) {
                    live[i] = size[k] + 1;
                    cur += size[k];
                }
                break;
            case MP_OP_FREE:
                ok = live[i] != 0;
                if (ok) {
                    cur -= live[i] - 1;
                    live[i] = 0;
                }
                break;
            case MP_OP_REALLOC:
                ok = live[i] != 0 && size[k] != 0;
                if (ok) {
                    cur = cur - (live[i] - 1) + size[k];
                    live[i] = size[k] + 1;
                }
                break;
            default:
                ok = 0;
            }
        if (!ok) {
            res->status = MP_EINVAL;
            res->bad_op = k;
            return MP_EINVAL;
        }
        if (cur > peak) peak = cur;
    }
    res->maxlive = peak;
    return MP_OK;
}

/* One row of figures (enum mp_sample_col) after `done` operations. */
static void take_sample(const mp_ops_t *ops, const void *st, uint64_t done, uint64_t *row)
{
    const mp_head_t *h = st;
    row[MP_SAMPLE_OPS] = done;
    row[MP_SAMPLE_USED] = h->used;
    row[MP_SAMPLE_REQUESTED] = h->requested;
    row[MP_SAMPLE_HIGH_WATER] = h->high_water;
    row[MP_SAMPLE_LARGEST_FREE] = ops->largest_free(st);
    row[MP_SAMPLE_AVAILABLE] = ops->available(st);
    row[MP_SAMPLE_LIVE] = h->live;
}

/* The generic timed loop: every op through the table (replay_loop.h is the same loop
 * for a strategy that compiles its own, mp_ops_t.replay), with a row of figures after
 * every `every` ops when every > 0 (the time spent sampling goes to *sample_ns). */
static uint64_t replay_ops(const mp_ops_t *ops, void *st, uint64_t n, const uint8_t *op,
                           const uint32_t *id, const uint64_t *size, const uint32_t *align,
                           uint64_t *ptr, uint64_t every, uint64_t *out, uint64_t *rows,
                           uint64_t *sample_ns)
{
    uint64_t failures = 0;
    uint64_t next = every ? every - 1 : UINT64_MAX; /* the op after which a row is due */
    for (uint64_t k = 0; k < n; k++) {
        uint64_t *p = &ptr[id[k]];
        uint64_t s = size[k] ? size[k] : 1;
        switch (op[k]) {
        case MP_OP_ALLOC:
            if (ops->alloc(st, s, align[k], p) != MP_OK) {
                *p = MP_NO_SPACE;
                failures++;
            }
            break;
        case MP_OP_FREE:
            if (*p != MP_NO_SPACE) {
                ops->free(st, *p);
                *p = MP_NO_SPACE;
            }
            break;
        default:
            if (*p != MP_NO_SPACE) {
                uint64_t q;
                if (ops->realloc(st, *p, s, 1, &q) == MP_OK) *p = q;
                else failures++;
            }
        }
        if (k == next) {
            uint64_t s0 = now_ns();
            take_sample(ops, st, k + 1, out + (*rows)++ * MP_SAMPLE_COLS);
            next += every;
            *sample_ns += now_ns() - s0;
        }
    }
    if (every && (*rows == 0 || out[(*rows - 1) * MP_SAMPLE_COLS + MP_SAMPLE_OPS] != n)) {
        uint64_t s0 = now_ns();
        take_sample(ops, st, n, out + (*rows)++ * MP_SAMPLE_COLS); /* the last op's figures */
        *sample_ns += now_ns() - s0;
    }
    return failures;
}

void mp_replay(const mp_ops_t *ops, void *st, uint64_t n, const uint8_t *op, const uint32_t *id,
               const uint64_t *size, const uint32_t *align, uint32_t max_id, uint64_t *ptr,
               uint64_t *live, mp_replay_result_t *res)
{
    mp_replay_sampled(ops, st, n, op, id, size, align, max_id, ptr, live, 0, NULL, res);
}

/* every == 0 (or out == NULL): no samples, and a strategy's own compiled loop
 * (mp_ops_t.replay) when it has one; sampling always takes the generic loop. */
void mp_replay_sampled(const mp_ops_t *ops, void *st, uint64_t n, const uint8_t *op,
                       const uint32_t *id, const uint64_t *size, const uint32_t *align,
                       uint32_t max_id, uint64_t *ptr, uint64_t *live, uint64_t every,
                       uint64_t *out, mp_replay_result_t *res)
{
    memset(res, 0, sizeof *res);
    if (mp_trace_validate(n, op, id, size, max_id, live, res)) return;
    for (uint64_t i = 0; i <= max_id; i++) ptr[i] = MP_NO_SPACE;
    if (!out) every = 0;
    uint64_t rows = 0, sample_ns = 0;
    uint64_t t0 = now_ns();
    uint64_t failures = every == 0 && ops->replay
                            ? ops->replay(st, n, op, id, size, align, max_id, ptr)
                            : replay_ops(ops, st, n, op, id, size, align, ptr, every, out,
                                         &rows, &sample_ns);
    for (uint64_t i = 0; i <= max_id; i++)
        if (ptr[i] != MP_NO_SPACE) ops->free(st, ptr[i]);
    res->elapsed_ns = now_ns() - t0 - sample_ns;
    res->samples = rows;
    const mp_head_t *h = st;
    res->ops = n;
    res->failures = failures;
    res->peak_used = h->peak_used;
    res->high_water = h->high_water;
    res->status = MP_OK;
}

void mp_replay_libc(uint64_t n, const uint8_t *op, const uint32_t *id, const uint64_t *size,
                    const uint32_t *align, uint32_t max_id, uint64_t *ptr, uint64_t *live,
                    mp_replay_result_t *res)
{
    memset(res, 0, sizeof *res);
    if (mp_trace_validate(n, op, id, size, max_id, live, res)) return;
    void **p = (void **)ptr;
    _Static_assert(sizeof(void *) <= sizeof(uint64_t), "pointers fit the scratch array");
    for (uint64_t i = 0; i <= max_id; i++) p[i] = NULL;
    uint64_t failures = 0;
    uint64_t t0 = now_ns();
    for (uint64_t k = 0; k < n; k++) {
        void **q = &p[id[k]];
        switch (op[k]) {
        case MP_OP_ALLOC:
            if (align[k] > 16) {
                if (posix_memalign(q, align[k], size[k])) *q = NULL;
            } else {
                *q = malloc(size[k]);
            }
            if (!*q) failures++;
            break;
        case MP_OP_FREE:
            free(*q);
            *q = NULL;
            break;
        default:
            if (*q) {
                void *r = realloc(*q, size[k]);
                if (r) *q = r;
                else failures++;
            }
        }
    }
    for (uint64_t i = 0; i <= max_id; i++) free(p[i]);
    res->elapsed_ns = now_ns() - t0;
    res->ops = n;
    res->failures = failures;
    res->status = MP_OK;
}
