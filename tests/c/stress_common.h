/*
 * stress_common.h -- what every C stress test shares: a seeded generator, failure
 * reports that say where and after which operation, and an allocator that exits.
 * (Included by the stress tests in this folder; CI builds each test file on its own.)
 */
#ifndef MEMPOOL_STRESS_COMMON_H
#define MEMPOOL_STRESS_COMMON_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef unsigned long long ull;

static uint64_t g_rng;     /* splitmix64 state: set from the seed          */
static char g_ctx[512];    /* what the test is doing (strategy, run, step) */
static char g_op[256];     /* the last operation, for the failure report   */

static uint64_t rnd(void)
{
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return n ? rnd() % n : 0; }

#define FAIL(...)                                                                                \
    do {                                                                                         \
        fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                     \
        fprintf(stderr, __VA_ARGS__);                                                            \
        fprintf(stderr, "\n  context: %s\n  last op: %s\n", g_ctx, g_op);                        \
        exit(1);                                                                                 \
    } while (0)
#define REQUIRE(cond, ...)                                                                       \
    do {                                                                                         \
        if (!(cond)) FAIL(__VA_ARGS__);                                                          \
    } while (0)

/* zeroed memory, or exit(2) */
static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(2);
    }
    return p;
}

#endif
