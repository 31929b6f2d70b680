/*
 * stress_replay.c -- the replay hooks (mp_ops_t.replay: TLSF's and BestFit's timed loop
 * compiled in their own files, replay_loop.h) against replay.c's generic loop through
 * the ops table: on random traces (allocs with and without alignment, size 0, frees,
 * reallocs, ids reused, spans small enough that allocs fail, node budgets small enough
 * that the table runs out) both must report the same failures, peak and high water, and
 * leave byte-identical states that pass check().
 *
 * Built and run as every test of this folder is (.ci/run): the core's sources and this
 * file, -O2 and then ASan + UBSan + MP_DEBUG; arguments [seed [scale]].
 *
 * In MP_DEBUG builds the public tables have no hook (they check after every call): the
 * hook is reached through the raw table (mpi_ops_raw) there.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "mempool.h"
#include "replay.h"
#include "stress_common.h"

typedef struct strat {
    const char *name;
    const mp_ops_t *ops;
    uint64_t (*state_size)(uint64_t, uint64_t);
    int (*init)(void *, uint64_t, uint64_t);
} strat_t;

static const strat_t STRATS[] = {
    {"tlsf", &mp_tlsf_ops, mp_tlsf_state_size, mp_tlsf_init},
    {"bestfit", &mp_bestfit_ops, mp_bestfit_state_size, mp_bestfit_init},
};

typedef struct trace {
    uint64_t n;
    uint32_t max_id;
    uint8_t *op;
    uint32_t *id;
    uint64_t *size;
    uint32_t *align;
} trace_t;

/* A valid random trace: 'a' on a free id, 'f' / 'r' on a live one (replay validates). */
static void make_trace(trace_t *t, uint64_t n, uint32_t ids, uint64_t max_size)
{
    unsigned char *live = xmalloc(ids);
    t->n = 0;
    t->max_id = ids - 1;
    t->op = xmalloc(n);
    t->id = xmalloc(n * sizeof *t->id);
    t->size = xmalloc(n * sizeof *t->size);
    t->align = xmalloc(n * sizeof *t->align);
    static const uint32_t ALIGNS[] = {1, 1, 1, 2, 8, 16, 64, 64, 256, 4096};
    while (t->n < n) {
        uint32_t i = (uint32_t)below(ids);
        uint64_t k = t->n;
        t->id[k] = i;
        t->align[k] = 1;
        if (!live[i]) {
            t->op[k] = MP_OP_ALLOC;
            t->size[k] = below(8) == 0 ? 0 : 1 + below(below(4) ? 64 : max_size);
            t->align[k] = ALIGNS[below(sizeof ALIGNS / sizeof *ALIGNS)];
            live[i] = 1;
        } else if (below(5) == 0) {
            t->op[k] = MP_OP_REALLOC;
            t->size[k] = 1 + below(below(2) ? 64 : max_size);
        } else {
            t->op[k] = MP_OP_FREE;
            t->size[k] = 0;
            live[i] = 0;
        }
        t->n++;
    }
    free(live);
}

static void trace_free(trace_t *t)
{
    free(t->op);
    free(t->id);
    free(t->size);
    free(t->align);
}

/* Replay t through ops on a fresh state; returns the state (caller frees). */
static void *replay_one(const strat_t *s, const mp_ops_t *ops, const trace_t *t, uint64_t cap,
                        uint64_t maxb, uint64_t len, mp_replay_result_t *r)
{
    void *st = xmalloc(len);
    REQUIRE(s->init(st, cap, maxb) == MP_OK, "init(%llu, %llu)", (ull)cap, (ull)maxb);
    uint64_t *ptr = xmalloc(((uint64_t)t->max_id + 1) * sizeof *ptr);
    uint64_t *live = xmalloc(((uint64_t)t->max_id + 1) * sizeof *live);
    mp_replay(ops, st, t->n, t->op, t->id, t->size, t->align, t->max_id, ptr, live, r);
    free(ptr);
    free(live);
    return st;
}

static int g_failing; /* runs in which some alloc or realloc failed */

static void one_run(const strat_t *s, int run)
{
    uint64_t cap = 1 + below(below(2) ? 4096 : 1 << 20);
    uint64_t maxb = below(4) == 0 ? 1 + below(16) : 64 + below(4096);
    uint64_t len = s->state_size(cap, maxb);
    REQUIRE(len, "state_size(%llu, %llu)", (ull)cap, (ull)maxb);
    trace_t t;
    make_trace(&t, 1 + below(4000), 1 + (uint32_t)below(300), 1 + below(cap / 16 + 1));
    snprintf(g_ctx, sizeof g_ctx, "%s run %d: cap %llu max_blocks %llu, %llu ops", s->name, run,
             (ull)cap, (ull)maxb, (ull)t.n);
    const mp_ops_t *hooked = mpi_ops_raw(s->ops);
    REQUIRE(hooked->replay != NULL, "the raw table has no replay hook");
    mp_ops_t generic = *s->ops;
    generic.replay = NULL;
    mp_replay_result_t a, b;
    void *sa = replay_one(s, hooked, &t, cap, maxb, len, &a);
    void *sb = replay_one(s, &generic, &t, cap, maxb, len, &b);
    REQUIRE(a.status == MP_OK && b.status == MP_OK, "status %d / %d", a.status, b.status);
    REQUIRE(a.ops == b.ops && a.failures == b.failures && a.peak_used == b.peak_used &&
                a.high_water == b.high_water && a.maxlive == b.maxlive,
            "hook: %llu failures, peak %llu, high water %llu; generic: %llu, %llu, %llu",
            (ull)a.failures, (ull)a.peak_used, (ull)a.high_water, (ull)b.failures,
            (ull)b.peak_used, (ull)b.high_water);
    g_failing += a.failures != 0;
    REQUIRE(memcmp(sa, sb, len) == 0, "the states differ after the replay");
    char msg[256];
    REQUIRE(s->ops->check(sa, len, msg, sizeof msg) == MP_OK, "check: %s", msg);
    REQUIRE(((const mp_head_t *)sa)->live == 0, "ranges left live after the replay");
    free(sa);
    free(sb);
    trace_free(&t);
}

int main(int argc, char **argv)
{
    uint64_t seed;
    double scale = stress_args(argc, argv, "stress_replay", 15, &seed);
    int runs = (int)(300 * scale);
    for (size_t k = 0; k < sizeof STRATS / sizeof *STRATS; k++) {
        g_failing = 0;
        for (int r = 0; r < runs; r++) one_run(&STRATS[k], r);
        printf("  %s: %d random traces (%d with failed allocs), hook == generic loop\n",
               STRATS[k].name, runs, g_failing);
        REQUIRE(g_failing > runs / 10 && g_failing < runs - runs / 10, "the traces should fail now and then");
    }
    printf("stress_replay: ok\n");
    return 0;
}
